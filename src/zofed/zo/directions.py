"""Direction samplers: z(seed, i) for trainable tensor i, reproducible on any process.

`gaussian` is exact: a CPU `torch.Generator` seeded from mix(seed, i) fills a float32 buffer
with N(0, 1). The global RNG is never touched, so a step cannot disturb (or be disturbed by)
data shuffling, dropout or another client's step.

`pool` is fast: one table of N(0, 1) values is built once per process by a generator this
project defines (splitmix64 counters -> Box-Muller in float64 -> float32), so every machine and
device builds the same table bit for bit. Each tensor is cut into chunks; chunk c of tensor i
takes the contiguous window of the table starting at an offset hashed from (seed, i, c). A step
then does no random generation at all: a perturbation pass is one fused `add_` per chunk.
Windows of i.i.d. values at different offsets are uncorrelated, so directions for different
seeds are nearly orthogonal (measured in the tests); values repeat across chunks and tensors at
random shifts, which is the price of speed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar, Protocol

import numpy as np
import torch

from zofed.zo.seeds import mix_seed

DEFAULT_POOL_SIZE = 1 << 22  # 4M values, 16 MiB: small next to any LLM
POOL_CHUNK = 1 << 20


class DirectionSampler(Protocol):
    name: ClassVar[str]

    def fill_(self, out: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        """Fill float32 `out` in place with the direction of tensor `index` for `seed`."""
        ...

    def add_(self, tensor: torch.Tensor, seed: int, index: int, scale: float, scratch: torch.Tensor) -> None:
        """tensor += scale · z(seed, index), in place; `scratch` is a float32 buffer of tensor's shape."""
        ...


class GaussianDirections:
    name: ClassVar[str] = "gaussian"

    def __init__(self) -> None:
        self._generator = torch.Generator(device="cpu")

    def fill_(self, out: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        self._generator.manual_seed(mix_seed(seed, index))
        return out.normal_(generator=self._generator)

    def add_(self, tensor: torch.Tensor, seed: int, index: int, scale: float, scratch: torch.Tensor) -> None:
        tensor.add_(self.fill_(scratch, seed, index), alpha=scale)


@lru_cache(maxsize=4)
def normal_table(size: int, table_seed: int = 0) -> torch.Tensor:
    """`size` N(0, 1) float32 values from splitmix64 counters and Box-Muller; identical everywhere."""
    half = (size + 1) // 2
    counters = np.arange(2 * half, dtype=np.uint64) + np.uint64(mix_seed(table_seed, 0x7AB1E))
    bits = _splitmix64(counters)
    # 53 random bits per uniform; (k + 0.5) / 2^53 keeps u strictly inside (0, 1) for the log.
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    u1, u2 = uniform[:half], uniform[half:]
    radius = np.sqrt(-2.0 * np.log(u1))
    values = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:size]
    return torch.from_numpy(values.astype(np.float32))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64 by design
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class PoolDirections:
    name: ClassVar[str] = "pool"

    def __init__(self, size: int = DEFAULT_POOL_SIZE, table_seed: int = 0) -> None:
        if size < 1024:
            raise ValueError(f"direction pool size {size} is too small; use at least 1024 values")
        self.table = normal_table(size, table_seed)
        self.chunk = min(POOL_CHUNK, size // 4)
        # A copy of the table per tensor dtype: adding a float32 window to a bf16 tensor would
        # convert on every pass. z is then the bf16-rounded table, the same on every process.
        self._tables = {torch.float32: self.table}

    def _table_for(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._tables:
            self._tables[dtype] = self.table.to(dtype)
        return self._tables[dtype]

    def _windows(self, numel: int, seed: int, index: int, dtype: torch.dtype = torch.float32):
        """(start in tensor, window of the table) for each chunk of a tensor with `numel` values."""
        table = self._table_for(dtype)
        size = table.numel()
        for chunk, start in enumerate(range(0, numel, self.chunk)):
            length = min(self.chunk, numel - start)
            offset = mix_seed(seed, index, chunk) % (size - length + 1)
            yield start, table[offset : offset + length]

    def fill_(self, out: torch.Tensor, seed: int, index: int) -> torch.Tensor:
        flat = out.view(-1)
        for start, window in self._windows(flat.numel(), seed, index):
            flat[start : start + window.numel()].copy_(window)
        return out

    def add_(self, tensor: torch.Tensor, seed: int, index: int, scale: float, scratch: torch.Tensor) -> None:
        if not tensor.is_contiguous():
            tensor.add_(self.fill_(scratch, seed, index), alpha=scale)
            return
        flat = tensor.view(-1)
        for start, window in self._windows(flat.numel(), seed, index, tensor.dtype):
            flat[start : start + window.numel()].add_(window, alpha=scale)


DIRECTION_SAMPLERS: dict[str, type] = {GaussianDirections.name: GaussianDirections, PoolDirections.name: PoolDirections}


def make_directions(name: str, pool_size: int = DEFAULT_POOL_SIZE) -> DirectionSampler:
    if name == PoolDirections.name:
        return PoolDirections(pool_size)
    try:
        return DIRECTION_SAMPLERS[name]()
    except KeyError:
        known = ", ".join(sorted(DIRECTION_SAMPLERS))
        raise ValueError(f"unknown direction sampler '{name}'; use one of: {known}") from None
