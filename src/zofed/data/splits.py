"""Training, validation and test splits as `datasets` names them, the missing ones held out of train.

A source's `test` split is the test set and its `validation` split (datasets also maps `val`,
`valid` and `dev` files to it) the validation set; a split the source lacks is carved out of the
training split with `Dataset.train_test_split` (seeded). `data.limit` then draws that many
training examples from what is left, so held-out sets never shrink with the limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from zofed.data.examples import Example
from zofed.errors import ZofedError

# Names a hub dataset may give its validation split (a directory's files are mapped to `validation` by datasets).
VALIDATION_NAMES = ("validation", "valid", "val", "dev")
COLUMNS = ("prompt", "response", "category", "answer", "history")


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    sources: Mapping[str, str] = field(default_factory=dict)  # train/val/test -> where its examples came from


def to_table(examples: Sequence[Example]):
    """Examples as an Arrow dataset, one column per Example field (history as [role, content] pairs)."""
    import datasets

    features = datasets.Features({
        "prompt": datasets.Value("string"), "response": datasets.Value("string"),
        "category": datasets.Value("string"), "answer": datasets.Value("string"),
        "history": datasets.List(datasets.List(datasets.Value("string"))),
    })
    columns = {name: [getattr(example, name) for example in examples] for name in COLUMNS}
    columns["history"] = [[list(turn) for turn in history] for history in columns["history"]]
    return datasets.Dataset.from_dict(columns, features=features)


def from_table(table) -> list[Example]:
    return [Example(row["prompt"], row["response"], row["category"], row["answer"], tuple(tuple(t) for t in row["history"]))
            for row in table.to_list()]


def count(size: int | float, total: int, name: str) -> int:
    """A held-out size as a count: a whole number, or a fraction below 1 of the training source."""
    if isinstance(size, float) and size < 1:
        return max(1, round(size * total))
    if isinstance(size, float) and not size.is_integer():
        raise ZofedError(f"data.{name} {size} must be a whole count or a fraction below 1")
    return int(size)


def _hold_out(table, size: int, seed: int):
    """(rest, held out): `size` examples drawn by `seed` with Dataset.train_test_split."""
    parts = table.train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def choose_splits(
    source: Mapping[str, list[Example]],
    train_split: str,
    seed: int,
    val_size: int | float,
    test_size: int | float,
    limit: int | None = None,
    test: tuple[list[Example], str] | None = None,
    describe=lambda split: f"split {split}",
) -> Splits:
    """The splits of a run from the source's splits (by name); `test`: a test set given apart, with its origin."""
    if train_split not in source:
        raise ZofedError(f"{describe(train_split)}: no such split; the source has {', '.join(source)}; set data.split")
    train = to_table(source[train_split])
    total, where = len(train), {"train": describe(train_split)}
    carved = f"held out of {describe(train_split)} (seed {seed})"
    if test is None and "test" in source and train_split != "test":
        test = source["test"], describe("test")
    n_test = 0 if test is not None else count(test_size, total, "test_size")
    val_name = next((name for name in VALIDATION_NAMES if name in source and name != train_split), None)
    n_val = 0 if val_name else count(val_size, total, "val_size")
    if n_val + n_test >= total:
        raise ZofedError(
            f"{total} examples leave nothing to train on after {n_val} validation and {n_test} test examples; "
            "lower data.val_size/data.test_size or use more data"
        )
    if test is None:
        train, held = _hold_out(train, n_test, seed)
        test = from_table(held), carved
    if val_name:
        val = source[val_name], describe(val_name)
    else:
        train, held = _hold_out(train, n_val, seed)
        val = from_table(held), carved
    if limit is not None and limit < len(train):
        where["train"] += f", {limit} of its {len(train)} drawn (data.limit, seed {seed})"
        train = train.shuffle(seed=seed).select(range(limit))
    return Splits(from_table(train), val[0], test[0], where | {"val": val[1], "test": test[1]})


def split_examples(examples: Sequence[Example], seed: int, val_size: int | float, test_size: int | float) -> Splits:
    """Validation and test both held out of `examples`."""
    return choose_splits({"train": list(examples)}, "train", seed, val_size, test_size)
