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
