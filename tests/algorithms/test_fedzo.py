"""FedZO: b two-point estimates averaged per local step, delta or seeds upload, FedAvg over the sampled clients."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace

import pytest
import torch

from zofed.algorithms import Rejected, Sent, build_algorithm
from zofed.algorithms.fedzo import direction_seed
from zofed.config import RobustConfig
from zofed.runtime.screening import screen
from zofed.zo import make_directions, mix_seed

from .test_accept import STEPS, honest
from .toy import ToyProblem, run_rounds, train_client

ESTIMATORS = ("central", "forward")


def toy_loss(weights, batch) -> float:
    """The toy problem's loss, by hand in float64."""
    x, y = batch["x"].double(), batch["y"].double()
    return float(((x @ weights["weight"] + weights["bias"] - y) ** 2).mean())


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_local_step_applies_the_average_of_b_two_point_estimates(estimator):
    lr, mu, count, seed = 0.01, 0.05, 3, 11
    algorithm = build_algorithm("fedzo", {"lr": lr, "mu": mu, "directions_per_step": count, "estimator": estimator})
    problem = ToyProblem()
    state = algorithm.init(problem.initial(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    reply = algorithm.train(message, problem.env(0, seed=seed, steps=1))
    assert reply.kind == "delta"

    batch = next(problem.env(0, seed=seed, steps=1).batches)  # the same batch: the toy draws it from the seed
    theta = {name: tensor.double() for name, tensor in problem.initial().items()}
    sampler = make_directions("gaussian")
    expected = {name: torch.zeros_like(tensor) for name, tensor in theta.items()}
    for j in range(count):
        z = {name: sampler.fill_(torch.empty(tensor.shape), direction_seed(seed, 0, j), index).double()
             for index, (name, tensor) in enumerate(theta.items())}
        plus = toy_loss({name: theta[name] + mu * z[name] for name in theta}, batch)
        if estimator == "central":
            g = (plus - toy_loss({name: theta[name] - mu * z[name] for name in theta}, batch)) / (2 * mu)
        else:
            g = (plus - toy_loss(theta, batch)) / mu
        for name in theta:
            expected[name] -= lr / count * g * z[name]
    for name in theta:
        assert torch.allclose(reply.tensors[name].double(), expected[name], rtol=1e-4, atol=1e-6), name
    assert any(float(expected[name].abs().max()) > 1e-2 for name in theta)  # the step moved θ visibly


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_the_server_rebuilds_the_same_model_from_seeds_as_from_deltas(estimator):
    common = {"lr": 0.02, "mu": 1e-3, "directions_per_step": 3, "estimator": estimator}
    models = {}
    for upload in ("delta", "seeds"):
        algorithm, problem = build_algorithm("fedzo", {**common, "upload": upload}), ToyProblem()
        state = algorithm.init(problem.initial(), seed=0)
        clients = [0, 2]  # partial participation: client 1 not sampled
        messages = algorithm.configure(state, 1, clients)
        replies = [(client, train_client(algorithm, problem, message, client, 100 + client, steps=STEPS))
                   for client, message in zip(clients, messages)]
        assert {reply.kind for _, reply in replies} == {upload}
        if upload == "seeds":
            assert all(len(reply.seeds) == len(reply.scalars) == STEPS * 3 and not reply.tensors for _, reply in replies)
        else:  # FedAvg with partial participation: θ + the plain mean of the sampled clients' deltas
            new = algorithm.aggregate(state, 1, replies)
            mean = {name: sum(reply.tensors[name] for _, reply in replies) / 2 for name in state.weights}
            assert all(torch.allclose(new.weights[name], state.weights[name] + mean[name], atol=1e-7)
                       for name in state.weights)
        models[upload] = algorithm.aggregate(state, 1, replies).weights
    for name in models["delta"]:
        assert not torch.equal(models["delta"][name], torch.zeros_like(models["delta"][name]))
        assert torch.allclose(models["seeds"][name], models["delta"][name], rtol=0, atol=1e-6), name


@pytest.mark.parametrize("upload", ["delta", "seeds"])
def test_lowers_the_global_loss(upload):
    problem = ToyProblem()
    algorithm = build_algorithm("fedzo", {"lr": 0.02, "mu": 1e-3, "upload": upload})
    state = run_rounds(algorithm, problem, rounds=8)
    assert problem.global_loss(state.weights) < 0.5 * problem.global_loss(problem.initial())


SEEDS = ("fedzo", {"lr": 0.02, "mu": 1e-3, "directions_per_step": 3, "upload": "seeds"})


def test_an_honest_seeds_reply_passes_and_a_delta_reply_needs_only_the_common_checks():
    algorithm, state, sent, reply = honest(*SEEDS)
    assert algorithm.accept(state, sent, reply).seeds == reply.seeds
    algorithm, state, sent, reply = honest("fedzo", {"lr": 0.02, "mu": 1e-3})
    assert algorithm.accept(state, sent, reply).metrics["num_examples"] == float(sent.examples)


@pytest.mark.parametrize("forge, reason", [
    (lambda r: replace(r, seeds=tuple(mix_seed(9, t, j) for t in range(STEPS) for j in range(3))), "did not derive"),
    (lambda r: replace(r, seeds=r.seeds[3:6] + r.seeds[:3] + r.seeds[6:]), "twice or out of order"),
    (lambda r: replace(r, seeds=r.seeds[:-1], scalars=r.scalars[:-1]), "whole steps of 3"),
    (lambda r: replace(r, seeds=r.seeds[:-3], scalars=r.scalars[:-3]), "records for 4 local steps"),
    (lambda r: replace(r, seeds=r.seeds + r.seeds[-3:], scalars=r.scalars + r.scalars[-3:]), "records for 4 local steps"),
    (lambda r: replace(r, kind="delta"), "where this method's clients send 'seeds'"),
    (lambda r: replace(r, round=0), "round 0 in round 1"),
    (lambda r: replace(r, metrics={**r.metrics, "num_examples": 1e9}), "examples"),
])
def test_forged_seeds_replies_are_rejected_and_counted(forge, reason):
    algorithm, state, sent, reply = honest(*SEEDS)
    forged = forge(reply)
    with pytest.raises(Rejected, match=reason):
        algorithm.accept(state, sent, forged)
    screened = screen([(sent.client, forged)], {sent.client: sent}, state, algorithm, RobustConfig())
    assert screened.replies == [] and list(screened.rejected) == [sent.client]


def test_a_seeds_reply_to_a_delta_server_is_rejected():
    _, _, _, seeds_reply = honest(*SEEDS)
    algorithm, state, sent, _ = honest("fedzo", {"lr": 0.02, "mu": 1e-3})
    with pytest.raises(Rejected, match="where this method's clients send 'delta'"):
        algorithm.accept(state, sent, seeds_reply)


def counting(env, nan_step: int | None = None, calls_per_step: int = 0):
    """The env with its forwards counted; with `nan_step`, every loss of that local step is NaN."""
    calls = []

    def loss(batch):
        calls.append(1)
        if nan_step is not None and (len(calls) - 1) // calls_per_step == nan_step:
            return math.nan
        return env.loss(batch)

    return dataclasses.replace(env, loss=loss), calls


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_forward_passes_are_counted_exactly_a_skipped_step_included(estimator, count):
    per_step = 2 * count if estimator == "central" else count + 1
    algorithm = build_algorithm("fedzo", {"lr": 0.02, "mu": 1e-3, "directions_per_step": count,
                                          "estimator": estimator, "upload": "seeds"})
    problem = ToyProblem()
    state = algorithm.init(problem.initial(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    env, calls = counting(problem.env(0, seed=5, steps=STEPS), nan_step=1, calls_per_step=per_step)
    reply = algorithm.train(message, env)
    assert len(calls) == per_step * STEPS == reply.metrics["forward_passes"]
    assert reply.metrics["skipped_steps"] == 1.0
    # the skipped step is b zero records, accepted, and moves nothing: the server rebuilds the client's model
    assert reply.scalars[count : 2 * count] == (0.0,) * count and all(reply.scalars[:count])
    accepted = algorithm.accept(state, Sent(0, message, 5, len(problem.inputs[0]), STEPS), reply)
    new = algorithm.aggregate(state, 1, [(0, accepted)])
    assert torch.allclose(new.weights["weight"], problem.weight.data, atol=1e-6, rtol=0)
