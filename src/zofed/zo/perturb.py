"""In-place perturbation θ += scale·z(seed) over an ordered list of trainable tensors, or a block of them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from zofed.lazy import lazy_import
from zofed.zo.directions import DirectionSampler

torch = lazy_import("torch")  # imported on first use: the registry reads this module without torch

Function = TypeVar("Function", bound=Callable)


def no_grad(function: Function) -> Function:
    """`@torch.no_grad()` that reads torch when `function` is called, not when its module is imported."""

    @functools.wraps(function)
    def without_grad(*args, **kwargs):
        with torch.no_grad():
            return function(*args, **kwargs)

    return without_grad  # type: ignore[return-value]


class Scratch:
    """One reusable float32 buffer per device, so a pass over the model allocates nothing per tensor."""

    def __init__(self) -> None:
        self._buffers: dict[torch.device, torch.Tensor] = {}

    def take(self, shape: torch.Size, device: torch.device | str = "cpu") -> torch.Tensor:
        device, numel = torch.device(device), shape.numel()
        buffer = self._buffers.get(device)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[device] = torch.empty(numel, dtype=torch.float32, device=device)
        return buffer[:numel].view(shape)


Rounding = Literal["nearest", "stochastic"]


@no_grad
def perturb_(
    tensors: Sequence[torch.Tensor],
    seed: int,
    scale: float,
    directions: DirectionSampler,
    scratch: Scratch,
    block: Sequence[int] | None = None,
    *,
    restore: float = 0.0,
    rounding: Rounding = "nearest",
) -> None:
    """θ_i += (restore + scale) · z(seed, i) in place for every tensor i of `block` (None: every tensor).

    i is always the tensor's index in the full view, whatever the block, so a (seed, block) pair
    names the same direction on a client and on the server. float32 tensors take one add. bf16 and
    fp16 tensors are staged through float32: `restore` (undoing the pass before, -left) is added and
    rounded to nearest first, then `scale`, rounded to nearest (a perturbation) or stochastically
    (`rounding="stochastic"`: an update, whose expected value survives below the format's resolution).
    """
    stochastic = rounding == "stochastic"
    for index in range(len(tensors)) if block is None else block:
        tensor = tensors[index]
        buffer = scratch.take(tensor.shape, tensor.device)
        if restore == 0.0 and not stochastic:
            directions.add_(tensor, seed, index, scale, buffer)  # a plain perturbation: any sampler's add_
        else:
            directions.add_(tensor, seed, index, scale, buffer, restore=restore, stochastic=stochastic)
