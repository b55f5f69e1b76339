import math

import pytest
import torch
from pydantic import ValidationError

from zofed.serveropt import (
    ServerOptimizerSettings,
    adam,
    apply_updates,
    build_server_optimizer,
    chain,
    clip_by_global_norm,
    scale,
    server_step,
    sgd,
    yogi,
)


def params():
    generator = torch.Generator().manual_seed(0)
    return {"a": torch.randn(4, 3, generator=generator), "b": torch.randn(5, generator=generator)}


def pseudo_grads(steps):
    generator = torch.Generator().manual_seed(1)
    return [{"a": torch.randn(4, 3, generator=generator), "b": torch.randn(5, generator=generator)} for _ in range(steps)]


def run(transform, grads_list, start):
    weights, state = dict(start), transform.init(start)
    for grads in grads_list:
        updates, state = transform.update(grads, state, weights)
        weights = apply_updates(weights, updates)
    return weights, state


def run_torch(make_optimizer, grads_list, start):
    tensors = {name: torch.nn.Parameter(t.clone()) for name, t in start.items()}
    optimizer = make_optimizer(list(tensors.values()))
    for grads in grads_list:
        for name, tensor in tensors.items():
            tensor.grad = grads[name].clone()
        optimizer.step()
    return {name: t.detach() for name, t in tensors.items()}


def assert_close(a, b):
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)


def test_sgd_lr_one_gives_the_new_weights_from_the_pseudo_gradient():
    # pseudo-gradient = old − new, so θ + (−1)·(old − new) = new: plain averaging
    old, new = params(), pseudo_grads(1)[0]
    weights, _ = run(sgd(1.0), [{n: old[n] - new[n] for n in old}], old)
    assert_close(weights, new)


def test_hand_computed_momentum_and_adam_steps():
    start = {"x": torch.tensor([1.0, -2.0])}
    grads = [{"x": torch.tensor([0.5, 1.0])}, {"x": torch.tensor([-1.0, 2.0])}]
    weights, _ = run(sgd(0.1, momentum=0.9), grads, start)
    # buffers: g1 = [0.5, 1]; 0.9·g1 + g2 = [-0.55, 2.9]; θ = start − 0.1·(g1 + buffer2)
    assert torch.allclose(weights["x"], torch.tensor([1.0 - 0.1 * (0.5 - 0.55), -2.0 - 0.1 * (1.0 + 2.9)]))

    weights, state = run(adam(0.1, beta1=0.5, beta2=0.75, tau=0.0), grads[:1], start)
    # one bias-corrected Adam step is lr·sign(g) whatever the betas
    assert torch.allclose(weights["x"], torch.tensor([0.9, -2.1]))
    assert state.info == {"0.count": 1}
    weights, _ = run(adam(0.1, beta1=0.5, beta2=0.75, tau=0.0), grads, start)
    m = 0.5 * (0.5 * torch.tensor([0.5, 1.0])) + 0.5 * torch.tensor([-1.0, 2.0])
    v = 0.75 * (0.25 * torch.tensor([0.25, 1.0])) + 0.25 * torch.tensor([1.0, 4.0])
    second = 0.1 * (m / 0.75) / (v / (1 - 0.75**2)).sqrt()
    assert torch.allclose(weights["x"], torch.tensor([0.9, -2.1]) - second)


def test_hand_computed_yogi_step():
    start = {"x": torch.tensor([0.0, 0.0])}
    grads = [{"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([0.5, 3.0])}]
    weights, state = run(yogi(1.0, beta1=0.0, beta2=0.5, tau=0.0, bias_correction=False), grads, start)
    # v1 = 0.5·g1² = [0.5, 2]; v2 = v1 − 0.5·g2²·sign(v1 − g2²) = [0.5 − 0.125, 2 + 4.5]
    v2 = torch.tensor([0.375, 6.5])
    step1 = torch.tensor([1.0, 2.0]) / torch.tensor([0.5, 2.0]).sqrt()
    step2 = torch.tensor([0.5, 3.0]) / v2.sqrt()
    assert torch.allclose(weights["x"], -(step1 + step2))
    assert torch.allclose(state.tensors["0.v/x"], v2)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (sgd(0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
        (adam(0.01, 0.9, 0.99, 1e-3), lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.99), eps=1e-3)),
        (adam(0.01, 0.8, 0.95, 1e-8, amsgrad=True),
         lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.95), eps=1e-8, amsgrad=True)),
    ],
    ids=["sgd-momentum", "adam", "amsgrad"],
)
def test_equals_torch_optim_over_several_steps(ours, theirs):
    grads = pseudo_grads(6)
    # shrink later gradients so AMSGrad's running max differs from Adam's v
    grads = [{n: g * (0.3 ** k) for n, g in step.items()} for k, step in enumerate(grads)]
    mine, _ = run(ours, grads, params())
    assert_close(mine, run_torch(theirs, grads, params()))


def test_amsgrad_differs_from_adam_when_gradients_shrink():
    grads = [{n: g * (0.1 ** k) for n, g in step.items()} for k, step in enumerate(pseudo_grads(4))]
    plain, _ = run(adam(0.01, 0.8, 0.95), grads, params())
    ams, _ = run(adam(0.01, 0.8, 0.95, amsgrad=True), grads, params())
    assert not torch.allclose(plain["a"], ams["a"])


def test_clip_by_global_norm_matches_torch_and_leaves_small_gradients():
    grads = pseudo_grads(1)[0]
    norm = math.sqrt(sum(float(g.square().sum()) for g in grads.values()))
    clipped, _ = clip_by_global_norm(norm / 2).update(grads, clip_by_global_norm(1.0).init(grads), None)
    tensors = [g.clone() for g in grads.values()]
    for t in tensors:
        t.grad = t.clone()
    torch.nn.utils.clip_grad_norm_(tensors, norm / 2)
    for got, want in zip(clipped.values(), tensors):
        torch.testing.assert_close(got, want.grad)
    unclipped, _ = clip_by_global_norm(norm * 2).update(grads, None, None)
    assert all(torch.equal(unclipped[n], grads[n]) for n in grads)


def test_chain_composes_in_order_and_keeps_each_state_apart():
    transform = chain(scale(2.0), sgd(0.1, momentum=0.5), scale(10.0))
    state = transform.init(params())
    assert set(state.tensors) == {f"1.0.trace/{n}" for n in ("a", "b")}
    grads = {"a": torch.ones(4, 3), "b": torch.ones(5)}
    updates, state = transform.update(grads, state, params())
    assert torch.allclose(updates["b"], torch.full((5,), -2.0))  # 10·(−0.1)·(2·1)
    updates, _ = transform.update(grads, state, params())
    assert torch.allclose(updates["b"], torch.full((5,), -3.0))  # buffer 0.5·2 + 2 = 3


def test_update_does_not_write_into_the_state_it_was_given():
    transform = adam(0.1)
    state = transform.init(params())
    before = {k: v.clone() for k, v in state.tensors.items()}
    transform.update(pseudo_grads(1)[0], state, params())
    assert all(torch.equal(state.tensors[k], before[k]) for k in before)
    assert state.info == {"0.count": 0}


@pytest.mark.parametrize("name", ["sgd", "adam", "amsgrad", "yogi"])
def test_server_step_through_server_state_pieces_resumes_bit_identically(name):
    settings = ServerOptimizerSettings(name=name, lr=0.01, momentum=0.9, clip_norm=5.0)
    transform = build_server_optimizer(settings)
    grads = pseudo_grads(4)
    weights, buffers, info = params(), {"other": torch.ones(2)}, None
    for step, g in enumerate(grads):
        if step == 2:  # a checkpoint round trip: tensors copied, JSON info through text
            import json

            buffers = {k: v.clone() for k, v in buffers.items()}
            info = json.loads(json.dumps(info))
        weights, buffers, info = server_step(transform, weights, g, buffers, info)
    straight, _ = run(transform, grads, params())
    assert all(torch.equal(weights[n], straight[n]) for n in weights)
    assert torch.equal(buffers["other"], torch.ones(2))
    assert all(k == "other" or k.startswith("serveropt/") for k in buffers)


def test_settings_reject_bad_values():
    with pytest.raises(ValidationError):
        ServerOptimizerSettings(name="adagrad")
    with pytest.raises(ValidationError):
        ServerOptimizerSettings(beta2=1.0)
    with pytest.raises(ValidationError):
        ServerOptimizerSettings(learning_rate=0.1)
