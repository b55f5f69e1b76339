"""Blocks on the wire: a block is a subset of the trainable tensors, named by view index, and
travels as sorted [start, stop) ranges (usually one contiguous run of the view).

The block-aware operations themselves are the ordinary ones with a `block` argument:
`perturb_(..., block=...)`, `two_point(..., block=...)`, `replay_(..., blocks=...)`.
"""

from __future__ import annotations

from collections.abc import Sequence


def to_ranges(indices: Sequence[int]) -> list[list[int]]:
    """Sorted indices as [start, stop) ranges."""
    ranges: list[list[int]] = []
    for index in indices:
        if ranges and ranges[-1][1] == index:
            ranges[-1][1] += 1
        else:
            ranges.append([index, index + 1])
    return ranges


def from_ranges(ranges: Sequence[Sequence[int]], count: int) -> list[int] | None:
    """The indices of untrusted [start, stop) ranges, or None when they leave [0, count), overlap or are empty."""
    indices = [i for start, stop in ranges for i in range(int(start), int(stop))]
    if not indices or len(set(indices)) != len(indices) or min(indices) < 0 or max(indices) >= count:
        return None
    return indices


def range_indices(ranges: Sequence[Sequence[int]]) -> list[int]:
    """The indices of ranges the server itself wrote or already checked (`from_ranges` for a client's)."""
    return [i for start, stop in ranges for i in range(int(start), int(stop))]
