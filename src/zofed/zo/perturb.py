"""In-place perturbation θ += scale·z(seed) over an ordered list of trainable tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zofed.zo.directions import DirectionSampler


class Scratch:
    """One reusable float32 buffer, so a pass over the model allocates nothing per tensor.

    It lives on the device of the tensors it serves (the model's), so z is never built on the host.
    """

    def __init__(self) -> None:
        self._buffer = torch.empty(0, dtype=torch.float32)

    def take(self, shape: torch.Size, device: torch.device | None = None) -> torch.Tensor:
        numel = shape.numel()
        device = self._buffer.device if device is None else device
        if self._buffer.numel() < numel or self._buffer.device != device:
            self._buffer = torch.empty(numel, dtype=torch.float32, device=device)
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
        directions.add_(tensor, seed, index, scale, scratch.take(tensor.shape, tensor.device))
