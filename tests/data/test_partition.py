import math
from collections import Counter

import pytest

from zofed.data import PARTITIONERS, partition, split_examples
from zofed.data.builtin import generate
from zofed.errors import ZofedError

from ..shared_data import shared_data

LABELS = [f"c{i % 5}" for i in range(1000)]


def assert_is_partition(parts, total):
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(total))
    assert all(part for part in parts)


@pytest.mark.parametrize("method", [m for m in PARTITIONERS if m != "exponential"])
def test_partitions_cover_everything_once_and_are_seeded(method):
    parts = partition(method, LABELS, 8, seed=3)
    assert_is_partition(parts, len(LABELS))
    assert parts == partition(method, LABELS, 8, seed=3)
    if method != "meta":  # meta with 5 labels over 8 clients is determined up to shuffling inside a label
        assert parts != partition(method, LABELS, 8, seed=4)


def mean_label_entropy(parts, labels=LABELS):
    entropies = []
    for part in parts:
        counts = Counter(labels[i] for i in part)
        total = sum(counts.values())
        entropies.append(-sum(c / total * math.log(c / total) for c in counts.values()))
    return sum(entropies) / len(entropies)


def test_dirichlet_skew_grows_as_alpha_falls():
    skewed = mean_label_entropy(partition("dirichlet", LABELS, 10, seed=0, alpha=0.1))
    balanced = mean_label_entropy(partition("dirichlet", LABELS, 10, seed=0, alpha=100.0))
    assert balanced > 1.5 and skewed < 0.8 * balanced


def test_iid_sizes_are_near_equal():
    sizes = [len(p) for p in partition("iid", LABELS, 7, seed=0)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("clients", [2, 5, 12])
def test_meta_keeps_every_category(clients):
    labels = [f"cat{i % 9}" for i in range(180)] + ["rare"]
    parts = partition("meta", labels, clients, seed=0)
    assert_is_partition(parts, len(labels))
    assert {labels[i] for part in parts for i in part} == set(labels)
    if clients <= 9:  # whole categories stay together
        owners = {label: {c for c, part in enumerate(parts) for i in part if labels[i] == label} for label in set(labels)}
        assert all(len(o) == 1 for o in owners.values())


def test_pathological_gives_each_client_few_labels():
    parts = partition("pathological", LABELS, 5, seed=0, labels_per_client=2)
    assert_is_partition(parts, len(LABELS))
    assert all(len({LABELS[i] for i in part}) <= 3 for part in parts)


def test_shard_gives_each_client_few_labels_and_sizes_skew_by_method():
    parts = partition("shard", LABELS, 5, seed=0, shards_per_client=2)
    assert_is_partition(parts, len(LABELS))
    assert all(len({LABELS[i] for i in part}) <= 4 for part in parts)  # 2 shards, each across at most 2 labels
    for method in ("linear", "square", "exponential"):
        sizes = [len(p) for p in partition(method, LABELS, 4, seed=0)]
        assert sizes == sorted(sizes) and sizes[-1] > 2 * sizes[0], (method, sizes)


def test_a_split_that_cannot_be_heterogeneous_is_refused_in_one_line():
    for method in ("dirichlet", "pathological", "meta", "shard"):
        with pytest.raises(ZofedError, match=f"partition.method={method} splits by category, and all 40 training "
                                             "examples have category 'other'; use partition.method=iid") as error:
            partition(method, ["other"] * 40, 4, seed=0)
        assert "\n" not in str(error.value)
    assert_is_partition(partition("iid", ["other"] * 40, 4, seed=0), 40)
    with pytest.raises(ZofedError, match="labels_per_client=3 exceeds the 2 categories"):
        partition("pathological", ["a", "b"] * 10, 2, seed=0, labels_per_client=3)
    with pytest.raises(ZofedError, match="exponential cannot split 1000 training examples across 8 clients"):
        partition("exponential", LABELS, 8, seed=0)


def test_impossible_partitions_are_user_errors():
    with pytest.raises(ZofedError, match="cannot split 3 training examples across 5 clients"):
        partition("iid", ["a", "b", "c"], 5, seed=0)
    with pytest.raises(ZofedError, match="iid"):
        partition("dirichlet", [None] * 10, 2, seed=0)
    with pytest.raises(ZofedError, match="unknown partition"):
        partition("random", LABELS, 2, seed=0)


def test_splits_are_disjoint_and_seeded():
    examples = generate(300, seed=0)
    splits = split_examples(examples, seed=1, val_size=30, test_size=0.1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (240, 30, 30)
    ids = lambda xs: {x.prompt for x in xs}  # noqa: E731 (the built-in task never repeats a question)
    assert not (ids(splits.train) & ids(splits.val)) and not (ids(splits.val) & ids(splits.test))
    assert splits == split_examples(examples, seed=1, val_size=30, test_size=0.1)
    with pytest.raises(ZofedError, match="nothing to train"):
        split_examples(examples[:10], seed=0, val_size=5, test_size=5)


@pytest.mark.parametrize("task", ["builtin", "gsm8k"])
def test_dirichlet_alpha_0_1_skews_each_real_task_by_its_labels(task):
    # The GAM-LPP benchmark's split: Dirichlet(0.1) over the built-in categories and GSM8K's step buckets.
    from zofed.data import load_examples

    path = None if task == "builtin" else str(shared_data("gsm8k", "train.jsonl"))
    labels = [example.category for example in load_examples(task, path, limit=400, seed=0)]
    assert len(set(labels)) >= 4
    for seed in range(3):
        parts = partition("dirichlet", labels, 4, seed=seed, alpha=0.1)
        assert_is_partition(parts, len(labels))
        iid = partition("iid", labels, 4, seed=seed)
        assert mean_label_entropy(parts, labels) < 0.75 * mean_label_entropy(iid, labels)


def test_zofed_data_plots_the_clients_categories_with_flower_datasets(tmp_path, capsys):
    from zofed.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("clients: 3\npartition: {method: dirichlet, alpha: 0.3}\ndata: {limit: 90, val_size: 6, test_size: 6}\n")
    assert main(["data", str(config), "--plot", str(tmp_path / "plots" / "clients.png")]) == 0
    assert (tmp_path / "plots" / "clients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plot: " in capsys.readouterr().out
    assert main(["data", str(config), "--plot", str(tmp_path / "clients.txt")]) == 2
    assert "name a .png, .pdf or .svg file" in capsys.readouterr().err
