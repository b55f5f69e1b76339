"""In-place perturbation θ += scale·z(seed) over an ordered list of trainable tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zofed.zo.directions import DirectionSampler


class Scratch:
    """One reusable float32 buffer, so a pass over the model allocates nothing per tensor."""

    def __init__(self) -> None:
        self._buffer = torch.empty(0, dtype=torch.float32)

    def take(self, shape: torch.Size) -> torch.Tensor:
        numel = shape.numel()
        if self._buffer.numel() < numel:
            self._buffer = torch.empty(numel, dtype=torch.float32)
        return self._buffer[:numel].view(shape)


@torch.no_grad()
def perturb_(
    tensors: Sequence[torch.Tensor],
    seed: int,
    scale: float,
    directions: DirectionSampler,
    scratch: Scratch,
) -> None:
    """θ_i += scale · z(seed, i) for every tensor i, in place (bf16 tensors accumulate in their dtype)."""
    for index, tensor in enumerate(tensors):
        directions.add_(tensor, seed, index, scale, scratch.take(tensor.shape))
