import math

import torch

from zofed.zo import GaussianDirections, Scratch, perturb_, replay_, two_point, zo_step


def make_tensors():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(16, 8, generator=generator), torch.randn(8, generator=generator)]


def quadratic_loss(tensors):
    return lambda: float(sum((t**2).sum() for t in tensors))


def test_perturb_then_restore_returns_tensors_within_1e_6():
    tensors = make_tensors()
    original = [t.clone() for t in tensors]
    sampler, scratch = GaussianDirections(), Scratch()
    perturb_(tensors, seed=3, scale=1e-3, directions=sampler, scratch=scratch)
    assert not torch.equal(tensors[0], original[0])
    perturb_(tensors, seed=3, scale=-1e-3, directions=sampler, scratch=scratch)
    for t, o in zip(tensors, original):
        assert (t - o).abs().max().item() <= 1e-6


def test_step_estimates_directional_derivative_and_replay_matches():
    tensors = make_tensors()
    start = [t.clone() for t in tensors]
    sampler, scratch = GaussianDirections(), Scratch()
    result = zo_step(tensors, quadratic_loss(tensors), seed=11, mu=1e-3, lr=1e-2, directions=sampler, scratch=scratch)
    z = [sampler.fill_(torch.empty(t.shape), 11, i) for i, t in enumerate(start)]
    exact = float(sum((2 * s * d).sum() for s, d in zip(start, z)))  # ∇L·z for L = Σθ²
    assert not result.skipped
    assert math.isclose(result.projected_grad, exact, rel_tol=1e-3)
    assert result.coeff == -1e-2 * result.projected_grad
    replayed = [s.clone() for s in start]
    replay_(replayed, [(result.seed, result.coeff)], sampler, Scratch())
    for t, r in zip(tensors, replayed):
        assert (t - r).abs().max().item() <= 1e-5


def test_steps_lower_a_quadratic_loss():
    tensors = make_tensors()
    loss = quadratic_loss(tensors)
    before = loss()
    sampler, scratch = GaussianDirections(), Scratch()
    for seed in range(200):
        zo_step(tensors, loss, seed=seed, mu=1e-3, lr=2e-3, directions=sampler, scratch=scratch)
    assert loss() < 0.5 * before


def test_non_finite_loss_skips_and_restores():
    tensors = make_tensors()
    original = [t.clone() for t in tensors]
    result = zo_step(tensors, lambda: math.nan, seed=1, mu=1e-3, lr=1.0, directions=GaussianDirections(), scratch=Scratch())
    assert result.skipped and result.coeff == 0.0
    for t, o in zip(tensors, original):
        assert (t - o).abs().max().item() <= 1e-6


def test_bf16_tensors_are_perturbed_in_place():
    tensor = torch.zeros(64, dtype=torch.bfloat16)
    pointer = tensor.data_ptr()
    perturb_([tensor], seed=0, scale=1.0, directions=GaussianDirections(), scratch=Scratch())
    assert tensor.dtype == torch.bfloat16 and tensor.data_ptr() == pointer
    assert tensor.abs().sum() > 0


def test_reported_loss_is_l_plus_by_default_as_mezo_or_the_mean_when_asked():
    sampler, mu = GaussianDirections(), 0.1
    start = make_tensors()
    z = [sampler.fill_(torch.empty(t.shape), 5, i) for i, t in enumerate(start)]
    loss_plus = float(sum(((s + mu * d) ** 2).sum() for s, d in zip(start, z)))
    loss_minus = float(sum(((s - mu * d) ** 2).sum() for s, d in zip(start, z)))
    assert abs(loss_plus - loss_minus) > 1.0  # far enough apart that the two reports differ clearly
    for step_loss, expected in (("plus", loss_plus), ("mean", 0.5 * (loss_plus + loss_minus))):
        kwargs = {} if step_loss == "plus" else {"step_loss": step_loss}
        tensors = make_tensors()
        result = zo_step(tensors, quadratic_loss(tensors), 5, mu, 1e-3, sampler, Scratch(), **kwargs)
        assert math.isclose(result.loss, expected, rel_tol=1e-5)
        tensors = make_tensors()
        assert math.isclose(two_point(tensors, quadratic_loss(tensors), 5, mu, sampler, Scratch(), **kwargs)[1],
                            expected, rel_tol=1e-5)
        tensors = make_tensors()
        _, loss = two_point(tensors, quadratic_loss(tensors), 5, mu, sampler, Scratch(), block=[0, 1], **kwargs)
        assert math.isclose(loss, expected, rel_tol=1e-5)


def counted(loss_at):
    calls = []

    def loss() -> float:
        calls.append(1)
        return loss_at()

    return loss, calls


def directions_of(sampler, tensors, seed):
    return [sampler.fill_(torch.empty(t.shape), seed, i) for i, t in enumerate(tensors)]


def test_forward_estimator_is_the_one_sided_difference_in_two_forwards_and_two_passes():
    sampler, mu, lr = GaussianDirections(), 1e-2, 1e-2
    tensors = make_tensors()
    start = [t.clone() for t in tensors]
    z = directions_of(sampler, tensors, 9)
    loss_0 = float(sum((s**2).sum() for s in start))
    loss_plus = float(sum(((s + mu * d) ** 2).sum() for s, d in zip(start, z)))
    loss, calls = counted(quadratic_loss(tensors))
    result = zo_step(tensors, loss, 9, mu, lr, sampler, Scratch(), estimator="forward")
    assert len(calls) == 2  # L(θ) and L(θ+μz); central takes L(θ±μz)
    assert math.isclose(result.projected_grad, (loss_plus - loss_0) / mu, rel_tol=1e-4)
    assert math.isclose(result.loss, loss_plus, rel_tol=1e-6)  # step_loss plus: L(θ+μz)
    for t, s, d in zip(tensors, start, z):
        assert torch.allclose(t, s - lr * result.projected_grad * d, atol=1e-6, rtol=0)
    tensors = [s.clone() for s in start]
    mean = zo_step(tensors, quadratic_loss(tensors), 9, mu, lr, sampler, Scratch(), "mean", estimator="forward")
    assert math.isclose(mean.loss, loss_0, rel_tol=1e-6)  # step_loss mean: forward's estimate of L(θ) is L(θ)


def test_every_estimate_costs_the_forwards_forward_passes_counts():
    from zofed.zo import forward_passes

    sampler = GaussianDirections()
    for estimator in ("central", "forward"):
        tensors = make_tensors()
        loss, calls = counted(quadratic_loss(tensors))
        zo_step(tensors, loss, 1, 1e-3, 1e-3, sampler, Scratch(), estimator=estimator)
        assert len(calls) == forward_passes(estimator, 1)
        # three directions of one step share the forward estimator's L(θ)
        tensors = make_tensors()
        loss, calls = counted(quadratic_loss(tensors))
        base = loss() if estimator == "forward" else None
        for seed in range(3):
            two_point(tensors, loss, seed, 1e-3, sampler, Scratch(), estimator=estimator, base_loss=base)
        assert len(calls) == forward_passes(estimator, 3) == {"central": 6, "forward": 4}[estimator]


def test_forward_estimate_restores_theta_and_a_non_finite_loss_skips():
    sampler = GaussianDirections()
    tensors = make_tensors()
    start = [t.clone() for t in tensors]
    g, loss = two_point(tensors, quadratic_loss(tensors), 4, 1e-3, sampler, Scratch(), estimator="forward")
    assert math.isfinite(g) and all(torch.allclose(t, s, atol=1e-6, rtol=0) for t, s in zip(tensors, start))
    result = zo_step(tensors, lambda: math.nan, 4, 1e-3, 1.0, sampler, Scratch(), estimator="forward")
    assert result.skipped and result.coeff == 0.0
    assert all(torch.allclose(t, s, atol=1e-6, rtol=0) for t, s in zip(tensors, start))
    assert math.isnan(two_point(tensors, quadratic_loss(tensors), 4, 1e-3, sampler, Scratch(), estimator="forward",
                                base_loss=math.inf)[0])


def test_a_block_step_moves_only_its_block_along_the_full_view_directions():
    sampler, mu, lr = GaussianDirections(), 1e-2, 1e-2
    tensors = make_tensors()
    start = [t.clone() for t in tensors]
    result = zo_step(tensors, quadratic_loss(tensors), 6, mu, lr, sampler, Scratch(), block=[1])
    assert torch.equal(tensors[0], start[0])
    z1 = sampler.fill_(torch.empty(start[1].shape), 6, 1)
    loss_plus = float((start[0] ** 2).sum() + ((start[1] + mu * z1) ** 2).sum())
    loss_minus = float((start[0] ** 2).sum() + ((start[1] - mu * z1) ** 2).sum())
    assert math.isclose(result.projected_grad, (loss_plus - loss_minus) / (2 * mu), rel_tol=1e-4)
    replayed = [s.clone() for s in start]
    replay_(replayed, [(result.seed, result.coeff)], sampler, Scratch(), blocks=[[1]])
    assert all(torch.allclose(r, t, atol=1e-6, rtol=0) for r, t in zip(replayed, tensors))


def test_a_zero_record_moves_nothing():
    tensors = make_tensors()
    start = [t.clone() for t in tensors]
    replay_(tensors, [(3, 0.0), (4, -0.0)], GaussianDirections(), Scratch())
    assert all(torch.equal(t, s) for t, s in zip(tensors, start))
