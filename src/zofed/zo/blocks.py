"""Zeroth-order estimates restricted to a block: a subset of the trainable tensors, named by view index.

Block methods (FedSPZO's two blocks, ZorBA's active layers) perturb only some tensors. Tensor i's
direction is z(seed, i) for its index i in the full view whatever the block, so a (seed, block)
pair names the same direction on a client and on the server.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from zofed.zo.directions import DirectionSampler
from zofed.zo.perturb import Scratch


def to_ranges(indices: Sequence[int]) -> list[list[int]]:
    """Sorted indices as [start, stop) ranges: a block is usually one contiguous run of the view."""
    ranges: list[list[int]] = []
    for index in indices:
        if ranges and ranges[-1][1] == index:
            ranges[-1][1] += 1
        else:
            ranges.append([index, index + 1])
    return ranges


def from_ranges(ranges: Sequence[Sequence[int]], count: int) -> list[int] | None:
    """The indices of [start, stop) ranges, or None when they leave [0, count) or overlap."""
    indices = [i for start, stop in ranges for i in range(int(start), int(stop))]
    if not indices or len(set(indices)) != len(indices) or min(indices) < 0 or max(indices) >= count:
        return None
    return indices


@torch.no_grad()
def perturb_block_(
    tensors: Sequence[torch.Tensor], block: Sequence[int], seed: int, scale: float,
    directions: DirectionSampler, scratch: Scratch,
) -> None:
    """θ_i += scale·z(seed, i) for the tensors i of one block; i is the index in the full view."""
    for index in block:
        tensor = tensors[index]
        directions.add_(tensor, seed, index, scale, scratch.take(tensor.shape, tensor.device))


def block_estimate(
    tensors: Sequence[torch.Tensor], block: Sequence[int], loss_at: Callable[[], float], seed: int, mu: float,
    directions: DirectionSampler, scratch: Scratch,
) -> tuple[float, float]:
    """(g, (L+ + L−)/2) along the block's direction z(seed); θ restored. g is float32 as on the wire, NaN if a loss is."""
    perturb_block_(tensors, block, seed, mu, directions, scratch)
    loss_plus = loss_at()
    perturb_block_(tensors, block, seed, -2.0 * mu, directions, scratch)
    loss_minus = loss_at()
    perturb_block_(tensors, block, seed, mu, directions, scratch)
    if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
        return math.nan, math.nan
    return float(np.float32((loss_plus - loss_minus) / (2.0 * mu))), 0.5 * (loss_plus + loss_minus)
