"""Seeded train/validation/test splits."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from zofed.data.examples import Example
from zofed.errors import ZofedError


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]


def _count(size: int | float, total: int, name: str) -> int:
    if isinstance(size, float) and size < 1:
        return max(1, round(size * total))
    if isinstance(size, float) and not size.is_integer():
        raise ZofedError(f"data.{name} {size} must be a whole count or a fraction below 1")
    return int(size)


def split_examples(examples: Sequence[Example], seed: int, val_size: int | float, test_size: int | float) -> Splits:
    total = len(examples)
    n_val, n_test = _count(val_size, total, "val_size"), _count(test_size, total, "test_size")
    if n_val + n_test >= total:
        raise ZofedError(
            f"{total} examples leave nothing to train on after {n_val} validation and {n_test} test examples; "
            "lower data.val_size/data.test_size or use more data"
        )
    order = list(range(total))
    random.Random(seed).shuffle(order)
    pick = lambda indices: [examples[i] for i in indices]  # noqa: E731
    return Splits(
        train=pick(order[n_val + n_test :]), val=pick(order[:n_val]), test=pick(order[n_val : n_val + n_test])
    )
