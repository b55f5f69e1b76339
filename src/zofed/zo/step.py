"""The ZO step: a two-point estimate along z(seed), then the update, in place.

Two estimators, options of the same step (`estimator`):

  central (default, MeZO's)           forward (DeComFL's `rge-forward`)
    θ += μz        -> L+                 L(θ)           -> L0, once per step
    θ -= 2μz       -> L-                 θ += μz        -> L+
    g = (L+ - L-) / 2μ                   g = (L+ - L0) / μ
    θ += (μ - ηg)z                       θ += (-μ - ηg)z

The last pass restores θ and applies the update at once: 3 passes over the trainable tensors
(forward: 2), not 4. On bf16/fp16 tensors each pass after the first restores θ (rounded to
nearest: θ back, bit for bit, away from powers of two) before it adds the next perturbation or the
update, and the update is rounded stochastically, with the bits `replay_` uses
(zo/directions.py); float32 tensors take one add per pass, as the table says. Forwards per direction: central 2, forward 1 plus the step's one L0, which
every direction of a multi-direction step shares (`forward_passes`). Central's error is O(μ²),
forward's O(μ): forward buys fewer forwards with bias.

The record of the step is (seed, coeff = -ηg): replaying θ += coeff·z(seed) rebuilds the update
anywhere. A non-finite loss skips the step: θ is restored and coeff is 0.0, a record that moves
nothing (the client still uploads it, so the server sees every step it assigned).

Every operation takes `block` (view indices; None = every tensor): methods that move only part
of the model (FedSPZO's two blocks, ZorBA's active layers) use the same functions as the others.

With `privacy.dp: step` the loss closure returns one loss per example (zo/privacy.py): g is then
the clipped, noised mean of the per-example estimates from the same forwards, and the step never
skips and reports no loss.

The loss a step reports (`step_loss`) is L+ by default, as MeZO's trainer and the official
FedMeZO and FedKSeed code report it (each returns the loss at θ+μz); `mean` reports an estimate
of the loss at θ itself: (L+ + L−)/2 for central, L0 for forward. The choice changes only what
is reported (train_loss, and FedMeZO's round-wise/five-round signals built from it), never g.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from zofed.zo.directions import DirectionSampler
from zofed.zo.perturb import Scratch, no_grad, perturb_
from zofed.zo.privacy import private_scalar

if TYPE_CHECKING:  # annotations only: importing this module (the registry does) does not import torch
    import torch

StepLoss = Literal["plus", "mean"]
STEP_LOSS_HELP = "loss a step reports: plus = L+ (MeZO and the official code), mean = the estimate of L(θ)"
Estimator = Literal["central", "forward"]
ESTIMATOR_HELP = ("central: g = (L(θ+μz) - L(θ-μz))/2μ, 2 forwards a direction; "
                  "forward: g = (L(θ+μz) - L(θ))/μ, 1 forward a direction + L(θ) once a step")


def forward_passes(estimator: Estimator, directions_per_step: int = 1) -> int:
    """Model forwards one local step costs, a skipped step too."""
    return 2 * directions_per_step if estimator == "central" else directions_per_step + 1


@dataclass(frozen=True)
class StepResult:
    seed: int
    projected_grad: float  # g, the directional-derivative estimate; NaN when skipped
    coeff: float  # -lr·g; 0.0 when skipped
    loss: float  # as `step_loss` asks; NaN when skipped
    skipped: bool


def zo_step(
    tensors: Sequence[torch.Tensor],
    loss_at: Callable[[], float],
    seed: int,
    mu: float,
    lr: float,
    directions: DirectionSampler,
    scratch: Scratch,
    step_loss: StepLoss = "plus",
    *,
    estimator: Estimator = "central",
    block: Sequence[int] | None = None,
) -> StepResult:
    """One direction's estimate and update: θ += -lr·g·z(seed) on `block`, in 3 passes (forward: 2)."""
    base_loss = loss_at() if estimator == "forward" else None
    projected_grad, loss, left_at = _estimate(tensors, loss_at, seed, mu, directions, scratch, step_loss, estimator,
                                              base_loss, block)
    if math.isnan(projected_grad):
        perturb_(tensors, seed, 0.0, directions, scratch, block, restore=-left_at)
        return StepResult(seed, math.nan, 0.0, math.nan, skipped=True)
    coeff = -lr * projected_grad
    perturb_(tensors, seed, coeff, directions, scratch, block, restore=-left_at, rounding="stochastic")
    return StepResult(seed, projected_grad, coeff, loss, skipped=False)


def two_point(
    tensors: Sequence[torch.Tensor],
    loss_at: Callable[[], float],
    seed: int,
    mu: float,
    directions: DirectionSampler,
    scratch: Scratch,
    step_loss: StepLoss = "plus",
    *,
    estimator: Estimator = "central",
    base_loss: float | None = None,
    block: Sequence[int] | None = None,
) -> tuple[float, float]:
    """(g, reported loss) at θ along z(seed) on `block`, θ restored, nothing updated.

    For methods that combine several directions into one update (DeComFL with P > 1, FedSPZO) or
    update apart from the estimate (ZorBA). `base_loss` is L(θ) for the forward estimator, computed
    once per step and shared by its directions; None computes it here. g is float32-rounded like
    zo_step's; both values are NaN when a loss is not finite.
    """
    if estimator == "forward" and base_loss is None:
        base_loss = loss_at()
    projected_grad, loss, left_at = _estimate(tensors, loss_at, seed, mu, directions, scratch, step_loss, estimator,
                                              base_loss, block)
    perturb_(tensors, seed, 0.0, directions, scratch, block, restore=-left_at)
    return projected_grad, loss


def _estimate(
    tensors: Sequence[torch.Tensor],
    loss_at: Callable[[], float],
    seed: int,
    mu: float,
    directions: DirectionSampler,
    scratch: Scratch,
    step_loss: StepLoss,
    estimator: Estimator,
    base_loss: float | None,
    block: Sequence[int] | None,
) -> tuple[float, float, float]:
    """(g, reported loss, a) leaving θ at θ + a·z(seed): the caller's next pass adds -a (and the update)."""
    if estimator == "central":
        perturb_(tensors, seed, mu, directions, scratch, block)
        loss_plus = loss_at()
        perturb_(tensors, seed, -mu, directions, scratch, block, restore=-mu)  # fp32: one add of -2μ, as ever
        loss_minus = loss_at()
        private = private_scalar(loss_plus, loss_minus, 2.0 * mu)  # privacy.dp: step (zo/privacy.py)
        if private is not None:
            return private, math.nan, -mu  # a private step reports no loss: no noise covers it
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
            return math.nan, math.nan, -mu
        # g travels as float32, so the client applies the float32 value the server will replay.
        g = float(np.float32((loss_plus - loss_minus) / (2.0 * mu)))
        return g, loss_plus if step_loss == "plus" else 0.5 * (loss_plus + loss_minus), -mu
    if estimator != "forward":
        raise ValueError(f"unknown estimator '{estimator}'; use central or forward")
    perturb_(tensors, seed, mu, directions, scratch, block)
    loss_plus = loss_at()
    private = private_scalar(loss_plus, base_loss, mu)
    if private is not None:
        return private, math.nan, mu
    if not (base_loss is not None and math.isfinite(base_loss) and math.isfinite(loss_plus)):
        return math.nan, math.nan, mu
    g = float(np.float32((loss_plus - base_loss) / mu))
    return g, loss_plus if step_loss == "plus" else base_loss, mu


@no_grad
def replay_(
    tensors: Sequence[torch.Tensor],
    records: Sequence[tuple[int, float]],
    directions: DirectionSampler,
    scratch: Scratch,
    blocks: Sequence[Sequence[int]] | None = None,
) -> None:
    """Apply (seed, coeff) records in order: θ += coeff·z(seed), record k only on the tensors of
    blocks[k] (every tensor when `blocks` is None). A zero coefficient (a skipped step) moves nothing."""
    for k, (seed, coeff) in enumerate(records):
        if coeff != 0.0:
            perturb_(tensors, seed, coeff, directions, scratch, None if blocks is None else blocks[k], rounding="stochastic")
