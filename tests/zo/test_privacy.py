"""privacy.dp: step in the ZO core (zo/privacy.py): per-example clipping bounds one example's say, the
noise has the accountant's scale, and the step takes its per-example losses from its own two forwards."""

from __future__ import annotations

import math

import pytest
import torch

from zofed.zo import GaussianDirections, Scratch, two_point, zo_step
from zofed.zo.privacy import ExampleLosses, StepPrivacy, secret_generator


def privacy(clip=1.0, sigma=0.0, batch=4.0, seed=0) -> StepPrivacy:
    generator = torch.Generator().manual_seed(seed)
    return StepPrivacy(clip=clip, noise_multiplier=sigma, expected_batch=batch, generator=generator)


def quadratic_losses(tensor, targets, private):
    """Per-example losses 0.5·‖θ − t_i‖² of a one-tensor model: an exact, cheap stand-in for an LLM."""
    calls = []

    def loss_at():
        calls.append(1)
        values = 0.5 * ((tensor.unsqueeze(0) - targets) ** 2).sum(dim=1).double()
        return ExampleLosses(values, private) if private is not None else float(values.mean())

    return loss_at, calls


def test_one_adversarial_example_moves_the_scalar_by_at_most_clip_over_the_batch():
    torch.manual_seed(0)
    tensor = torch.zeros(16)
    honest = torch.randn(3, 16)
    hostile = torch.full((1, 16), 1e6)  # its loss difference along any direction is enormous
    directions, scratch, mu, clip, batch = GaussianDirections(), Scratch(), 1e-3, 0.5, 4.0
    for seed in range(20):
        with_it, _ = quadratic_losses(tensor, torch.cat([honest, hostile]), privacy(clip, batch=batch))
        without, _ = quadratic_losses(tensor, honest, privacy(clip, batch=batch))
        g_with, loss = two_point([tensor], with_it, seed, mu, directions, scratch)
        g_without, _ = two_point([tensor], without, seed, mu, directions, scratch)
        assert abs(g_with) <= 4 * clip / batch + 1e-6  # every example's scalar clipped to [-C, C]
        assert abs(g_with - g_without) <= clip / batch + 1e-6  # one example's say is C / b at most
        assert math.isnan(loss)  # a private step reports no loss
    assert torch.allclose(tensor, torch.zeros(16), atol=1e-6)  # θ restored


def test_non_finite_example_counts_zero_and_never_skips_the_step():
    upper = torch.tensor([1.0, math.nan, math.inf, 2.0], dtype=torch.float64)
    lower = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert privacy(clip=10.0).scalar(upper, lower, 1.0) == pytest.approx((1.0 + 1.0) / 4)


def test_noise_std_is_sigma_times_clip_over_the_expected_batch():
    sigma, clip, batch = 2.0, 0.5, 4.0
    private = privacy(clip, sigma, batch, seed=1)
    zeros = torch.zeros(3, dtype=torch.float64)
    draws = torch.tensor([private.scalar(zeros, zeros, 1.0) for _ in range(4000)])
    expected = sigma * clip / batch  # 0.25; a noise of σ (without C) would be 0.5, of σC without /b 1.0
    # the sample std of 4000 normal draws is within 3.5% of the true one with probability > 0.99
    assert draws.std().item() == pytest.approx(expected, rel=0.05)
    assert abs(draws.mean().item()) < 4 * expected / math.sqrt(4000)


def test_mean_of_per_example_scalars_is_the_batch_scalar_without_clip_or_noise():
    torch.manual_seed(1)
    tensor, targets = torch.randn(8), torch.randn(5, 8)
    directions, scratch, mu = GaussianDirections(), Scratch(), 1e-2
    batch_loss, batch_calls = quadratic_losses(tensor, targets, None)
    private_loss, private_calls = quadratic_losses(tensor, targets, privacy(clip=1e9, batch=5.0))
    for estimator in ("central", "forward"):
        g, _ = two_point([tensor], batch_loss, 3, mu, directions, scratch, estimator=estimator)
        g_private, _ = two_point([tensor], private_loss, 3, mu, directions, scratch, estimator=estimator)
        assert g_private == pytest.approx(g, rel=1e-5)
    assert len(private_calls) == len(batch_calls)  # the same forwards: per example, not extra


def test_private_zo_step_updates_with_the_private_scalar():
    torch.manual_seed(2)
    tensor, targets = torch.randn(8), torch.randn(4, 8)
    start = tensor.clone()
    loss_at, _ = quadratic_losses(tensor, targets, privacy(clip=1e-3, batch=4.0))
    result = zo_step([tensor], loss_at, 5, 1e-2, 0.1, GaussianDirections(), Scratch())
    assert not result.skipped and math.isnan(result.loss)
    assert abs(result.projected_grad) <= 1e-3 + 1e-9
    z = GaussianDirections().fill_(torch.empty(8), 5, 0)
    assert torch.allclose(tensor, start - 0.1 * result.projected_grad * z, atol=1e-6)


def test_secret_generators_differ_between_calls():
    first, second = secret_generator(), secret_generator()
    assert first.initial_seed() != second.initial_seed()
