"""Example-level differential privacy of a ZO step: one clipped, noised scalar per direction.

Everything a ZO client sends depends on its data only through the scalar g of each direction
(the directions are public seeds; weights, when uploaded, are θ moved by -lr·g·z). A private
step therefore privatises g alone, in the estimator itself (`_estimate` in zo/step.py), so every
method that calls `zo_step` or `two_point` gets it without a line of its own:

    g_i = (l_i(θ+μz) − l_i(θ−μz)) / 2μ     per example i, from the step's own two forwards
                                           (forward estimator: (l_i(θ+μz) − l_i(θ)) / μ)
    g_i ← min(max(g_i, −C), C)             clipped: one example moves the sum by at most C
    g   = (Σ_i g_i + N(0, (σ·C)²)) / b     b = the expected batch size (Poisson sampling)

The loss closure of a private client returns `ExampleLosses` (one loss per example: the mean
over that example's target tokens) instead of the batch's float; that is the whole switch. A
non-finite per-example difference counts as 0 (the step never skips on data, since a skip would
itself reveal something), and the loss a private step reports is NaN: a reported loss is a
statistic of the data that no noise covers.

The noise comes from `generator`, which the runtime seeds from the operating system's secret
randomness (`secret_generator`), never from the run's public seeds: noise derived from a seed the
server knows could be subtracted again.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zofed.lazy import lazy_import

torch = lazy_import("torch")  # imported on first use: the registry reads this module without torch

if TYPE_CHECKING:  # annotations only
    import torch as _torch


def secret_generator() -> "_torch.Generator":
    """A CPU generator seeded from the operating system's secret randomness (not reproducible, on purpose)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(secrets.randbits(63))
    return generator


@dataclass(frozen=True)
class StepPrivacy:
    """How a private client turns per-example differences into the one scalar it may release."""

    clip: float  # C: each example's scalar is clipped to [-C, C]
    noise_multiplier: float  # σ: the noise's standard deviation is σ·C
    expected_batch: float  # b: the sum is divided by the Poisson sample's expected size, not its drawn size
    generator: "_torch.Generator"

    def scalar(self, upper: "_torch.Tensor", lower: "_torch.Tensor", spacing: float) -> float:
        """(Σ_i clip((upper_i − lower_i)/spacing) + N(0, (σC)²)) / b, rounded to float32 like every g."""
        per_example = ((upper.double() - lower.double()) / spacing).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        total = float(per_example.clamp(-self.clip, self.clip).sum())
        if self.noise_multiplier > 0:
            total += self.noise_multiplier * self.clip * float(torch.randn((), generator=self.generator,
                                                                            dtype=torch.float64))
        import numpy as np  # numpy rounds exactly like the non-private path

        return float(np.float32(total / self.expected_batch))


@dataclass(frozen=True)
class ExampleLosses:
    """What a private client's loss closure returns: one loss per example of the batch (float64, CPU)."""

    values: "_torch.Tensor"
    privacy: StepPrivacy

    def __float__(self) -> float:
        # the batch's mean; only a check's business (never reported by a private step)
        return float(self.values.mean()) if self.values.numel() else 0.0


def private_scalar(upper: object, lower: object, spacing: float) -> float | None:
    """The private g where both losses are per example, None where the step is not private."""
    if not isinstance(upper, ExampleLosses):
        return None
    if not isinstance(lower, ExampleLosses):
        raise TypeError("a private step needs both of its losses per example")
    return upper.privacy.scalar(upper.values, lower.values, spacing)


def is_private(loss: object) -> bool:
    return isinstance(loss, ExampleLosses)


def finite(loss: object) -> bool:
    """Whether a loss can be used: a per-example loss always can (its non-finite entries count as 0)."""
    return True if isinstance(loss, ExampleLosses) else math.isfinite(loss)
