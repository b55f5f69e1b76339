"""Per-tensor scaled directions z_t = s_t · ξ_t over any base sampler.

A wrapper, so the unscaled samplers, `perturb_`, `zo_step` and `replay_` stay as they are: every
pass asks the base sampler for `scale · s_t` on tensor t. With every s_t = 1.0 the product is
exactly `scale`, so the step is bit-identical to the unscaled one (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from zofed.zo.directions import DirectionSampler, low_precision

if TYPE_CHECKING:  # annotations only: importing this module (the registry does) does not import torch
    import torch


class ScaledDirections:
    def __init__(self, base: DirectionSampler, scales: Sequence[float]) -> None:
        self.base = base
        self.scales = tuple(float(scale) for scale in scales)
        self.name = f"scaled-{base.name}"

    def fill_(self, out: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        return self.base.fill_(out, seed, index).mul_(self.scales[index])

    def add_(self, tensor: torch.Tensor, seed: int, index: int, scale: float, scratch: torch.Tensor,
             restore: float = 0.0, stochastic: bool = False) -> None:
        factor = self.scales[index]
        if low_precision(tensor):  # restore and update apart, as the base sampler stages them
            self.base.add_(tensor, seed, index, scale * factor, scratch, restore=restore * factor, stochastic=stochastic)
        else:  # one coefficient, (restore + scale)·s_t, exactly as before restores were passed apart
            self.base.add_(tensor, seed, index, (restore + scale) * factor, scratch)

    def stream_id(self, device: torch.device | str = "cpu") -> str:
        return self.base.stream_id(device)
