"""The two-point ZO step, in place, in three passes over the trainable tensors.

    θ += μz        -> L+
    θ -= 2μz       -> L-
    g = (L+ - L-) / 2μ
    θ += (μ - ηg)z    restores θ and applies the update in the same pass

The record of the step is (seed, coeff = -ηg): replaying θ += coeff·z(seed) rebuilds the update
anywhere. A non-finite loss skips the step: θ is restored and nothing is recorded.

The loss a step reports (`step_loss`) is L+ by default, as MeZO's trainer and the official
FedMeZO and FedKSeed code report it (each returns the loss at θ+μz); `mean` reports
(L+ + L−)/2, a lower-variance estimate of the loss at θ. The choice changes only what is
reported (train_loss, and FedMeZO's round-wise/five-round signals built from it), never g.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from zofed.zo.directions import DirectionSampler
from zofed.zo.perturb import Scratch, perturb_

StepLoss = Literal["plus", "mean"]
STEP_LOSS_HELP = "loss a step reports: plus = L+ (MeZO and the official code), mean = (L+ + L-)/2"


def reported_loss(loss_plus: float, loss_minus: float, step_loss: StepLoss) -> float:
    return loss_plus if step_loss == "plus" else 0.5 * (loss_plus + loss_minus)


@dataclass(frozen=True)
class StepResult:
    seed: int
    projected_grad: float  # g, the directional-derivative estimate
    coeff: float  # -lr·g; 0.0 when skipped
    loss: float  # L+ or (L+ + L-)/2, as `step_loss` asks
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
) -> StepResult:
    projected_grad, loss = _two_point(tensors, loss_at, seed, mu, directions, scratch, step_loss)
    if math.isnan(projected_grad):
        perturb_(tensors, seed, mu, directions, scratch)
        return StepResult(seed, math.nan, 0.0, math.nan, skipped=True)
    coeff = -lr * projected_grad
    perturb_(tensors, seed, mu + coeff, directions, scratch)
    return StepResult(seed, projected_grad, coeff, loss, skipped=False)


def _two_point(
    tensors: Sequence[torch.Tensor],
    loss_at: Callable[[], float],
    seed: int,
    mu: float,
    directions: DirectionSampler,
    scratch: Scratch,
    step_loss: StepLoss,
) -> tuple[float, float]:
    """(g, reported loss) from θ+μz and θ−μz; leaves θ at θ−μz. Both NaN when a loss is not finite."""
    perturb_(tensors, seed, mu, directions, scratch)
    loss_plus = loss_at()
    perturb_(tensors, seed, -2.0 * mu, directions, scratch)
    loss_minus = loss_at()
    if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
        return math.nan, math.nan
    # g travels as float32, so the client applies the float32 value the server will replay.
    return float(np.float32((loss_plus - loss_minus) / (2.0 * mu))), reported_loss(loss_plus, loss_minus, step_loss)


@torch.no_grad()
def replay_(
    tensors: Sequence[torch.Tensor],
    records: Sequence[tuple[int, float]],
    directions: DirectionSampler,
    scratch: Scratch,
) -> None:
    """Apply (seed, coeff) records in order: θ += coeff·z(seed) for each."""
    for seed, coeff in records:
        if coeff != 0.0:
            perturb_(tensors, seed, coeff, directions, scratch)


def zo_estimate(
    tensors: Sequence[torch.Tensor],
    loss_at: Callable[[], float],
    seed: int,
    mu: float,
    directions: DirectionSampler,
    scratch: Scratch,
    step_loss: StepLoss = "plus",
) -> tuple[float, float]:
    """(g, loss) at θ along z(seed) without updating: θ+μz, θ−2μz, then θ+μz restores.

    For methods that combine several directions into one update (DeComFL with P > 1).
    g is float32-rounded like zo_step's; it is NaN when a loss is not finite.
    """
    estimate = _two_point(tensors, loss_at, seed, mu, directions, scratch, step_loss)
    perturb_(tensors, seed, mu, directions, scratch)
    return estimate
