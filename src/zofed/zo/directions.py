"""Direction samplers: z(seed, i) for trainable tensor i, reproducible on any process.

`gaussian` is exact: a CPU `torch.Generator` seeded from mix(seed, i) fills a float32 buffer
with N(0, 1). The global RNG is never touched, so a step cannot disturb (or be disturbed by)
data shuffling, dropout or another client's step.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch

from zofed.zo.seeds import mix_seed


class DirectionSampler(Protocol):
    name: ClassVar[str]

    def fill_(self, out: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        """Fill float32 `out` in place with the direction of tensor `index` for `seed`."""
        ...


class GaussianDirections:
    name: ClassVar[str] = "gaussian"

    def __init__(self) -> None:
        self._generator = torch.Generator(device="cpu")

    def fill_(self, out: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        self._generator.manual_seed(mix_seed(seed, index))
        return out.normal_(generator=self._generator)


DIRECTION_SAMPLERS: dict[str, type] = {GaussianDirections.name: GaussianDirections}


def make_directions(name: str) -> DirectionSampler:
    try:
        return DIRECTION_SAMPLERS[name]()
    except KeyError:
        known = ", ".join(sorted(DIRECTION_SAMPLERS))
        raise ValueError(f"unknown direction sampler '{name}'; use one of: {known}") from None
