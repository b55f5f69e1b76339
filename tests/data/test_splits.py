"""Splits as `datasets` names them: a source's test and validation splits used, the rest held out; data.limit after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zofed.cli import main
from zofed.config import parse_config
from zofed.errors import ZofedError
from zofed.runtime.experiment import prepare_data


def write_rows(path: Path, prefix: str, count: int) -> Path:
    path.write_text("".join(json.dumps({"question": f"{prefix} {i}?", "answer": f"so\n#### {i}"}) + "\n" for i in range(count)))
    return path


def config(data: dict, **top):
    return parse_config({"task": "gsm8k", "model": "tiny-llama", "clients": 2, "data": data, **top})


def test_a_directory_test_and_validation_files_are_the_test_and_validation_sets(tmp_path):
    write_rows(tmp_path / "train.jsonl", "train", 40)
    write_rows(tmp_path / "test.jsonl", "test", 9)
    write_rows(tmp_path / "dev.jsonl", "dev", 6)  # datasets maps dev/val/valid files to `validation`
    splits = prepare_data(config({"path": str(tmp_path)})).splits
    assert [e.prompt for e in splits.test] == [f"test {i}?" for i in range(9)]  # whole, in file order
    assert [e.prompt for e in splits.val] == [f"dev {i}?" for i in range(6)]
    assert sorted(e.prompt for e in splits.train) == sorted(f"train {i}?" for i in range(40))  # nothing held out
    assert splits.sources["test"].endswith("split test") and splits.sources["val"].endswith("split validation")


def test_missing_splits_are_held_out_of_train_by_seed(tmp_path):
    write_rows(tmp_path / "train.jsonl", "train", 50)
    write_rows(tmp_path / "test.jsonl", "test", 5)
    one = prepare_data(config({"path": str(tmp_path), "val_size": 7})).splits
    assert len(one.test) == 5 and len(one.val) == 7 and len(one.train) == 43
    assert one.sources["val"].startswith("held out of") and "seed 0" in one.sources["val"]
    assert {e.prompt for e in one.val}.isdisjoint(e.prompt for e in one.train)
    assert one.val == prepare_data(config({"path": str(tmp_path), "val_size": 7})).splits.val
    assert one.val != prepare_data(config({"path": str(tmp_path), "val_size": 7}, seed=1)).splits.val


def test_limit_counts_training_examples_after_the_held_out_splits(tmp_path):
    write_rows(tmp_path / "train.jsonl", "train", 300)
    full = prepare_data(config({"path": str(tmp_path), "val_size": 20, "test_size": 30})).splits
    limited = prepare_data(config({"path": str(tmp_path), "val_size": 20, "test_size": 30, "limit": 100})).splits
    assert (len(limited.train), len(limited.val), len(limited.test)) == (100, 20, 30)
    assert limited.val == full.val and limited.test == full.test  # the limit never changes the held-out sets
    assert set(limited.train) <= set(full.train)
    assert "100 of its 250 drawn (data.limit" in limited.sources["train"]
    builtin = prepare_data(parse_config({"model": "tiny-llama", "clients": 2, "data": {"limit": 200, "val_size": 10, "test_size": 0.1}})).splits
    assert len(builtin.train) == 200 and len(builtin.val) == 10


def test_too_little_data_and_unknown_splits_are_one_line(tmp_path):
    write_rows(tmp_path / "train.jsonl", "train", 10)
    with pytest.raises(ZofedError, match="leave nothing to train on"):
        prepare_data(config({"path": str(tmp_path), "val_size": 5, "test_size": 5}))
    with pytest.raises(ZofedError, match="no such split; it has train; set data.test_split"):
        prepare_data(config({"path": str(tmp_path), "test_split": "test"}))


def test_zofed_data_prints_each_split_source_and_size(tmp_path, capsys):
    write_rows(tmp_path / "train.jsonl", "train", 60)
    write_rows(tmp_path / "test.jsonl", "test", 8)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"task": "gsm8k", "clients": 2, "data": {"path": str(tmp_path), "val_size": 6}}))
    assert main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"train          54  from data directory {tmp_path} split train" in out
    assert f"validation      6  from held out of data directory {tmp_path} split train (seed 0)" in out
    assert f"test            8  from data directory {tmp_path} split test" in out
