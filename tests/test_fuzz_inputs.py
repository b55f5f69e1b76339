"""Property-based (issue 22): configs, data files and checkpoint files, random or mutated, end in a
valid result or one `ZofedError` line; never another exception, and nothing is deleted."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zofed.algorithms import ServerState
from zofed.checkpoint import Checkpoint, CheckpointError, load_latest_checkpoint, save_checkpoint
from zofed.config import RunConfig, load_config, parse_config
from zofed.data import load_examples
from zofed.errors import ZofedError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

BASE = yaml.safe_dump({
    "name": "fuzz", "model": "tiny-llama", "rounds": 2, "clients": 2, "algorithm": "fedmezo",
    "fedmezo": {"lr": 0.005, "mu": 0.001}, "robust": {"clip_scalar": 10.0},
    "data": {"limit": 40, "val_size": 4}, "local": {"local_steps": 1, "batch_size": 2},
    "gamlpp": {"server_optimizer": {"name": "adam", "lr": 0.01}},
}).encode()
SPECIAL = [b"&a ", b"*a", b"<<: *a", b"\xff", b"\x00", b".inf", b".nan", b"1e400", b"!!python/object:os.system",
           b"[", b"{", b"\n  ", b": ", b"- ", b"'", b'"', b"\t", b"%YAML 1.1\n---\n", b"?"]


def one_line(error: ZofedError) -> None:
    message = str(error)
    assert message and "\n" not in message and len(message) < 2000, message


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for position, cut, insert in edits:
        at = position % (len(data) + 1)
        data = data[:at] + insert + data[at + cut:]
    return data


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 8), st.one_of(st.sampled_from(SPECIAL), st.binary(max_size=6))),
                 min_size=1, max_size=4)


def assert_finite(config: RunConfig) -> None:
    def walk(value):
        if isinstance(value, float):
            assert math.isfinite(value)
        for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
            walk(item)

    walk(config.to_dict())


@FAST
@given(change=edits)
def test_a_mutated_config_file_loads_or_fails_in_one_line(change, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(mutate(BASE, change))
    try:
        config = load_config(path)
    except ZofedError as error:
        one_line(error)
    else:
        assert_finite(config)


@FAST
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_any_config_text_loads_or_fails_in_one_line(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        load_config(path)
    except ZofedError as error:
        one_line(error)


KEYS = ["rounds", "name", "fedmezo.lr", "fedmezo.mu", "robust.clip_scalar", "robust.norm_bound", "faults.hostile_scale",
        "gamlpp.server_optimizer.lr", "data.val_size", "partition.alpha", "clients_per_round", "data.columns", "seed",
        "trainable.target_modules", "fedmezo", "data", "nope.deeper", "zorba.memory_profile.base_mb"]
VALUES = st.one_of(st.text(max_size=40), st.sampled_from([".inf", "-.inf", ".nan", "1e400", "-1e400", "1.0e400", "*a", "&a [1]",
                                                           "[1, .inf]", "{lr: .nan}", "~", "0x10", "1_000", "null"]))


@FAST
@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_any_override_value_parses_or_fails_in_one_line(overrides):
    raw = yaml.safe_load(BASE)
    try:
        config = parse_config(raw, [f"{key}={value}" for key, value in overrides])
    except ZofedError as error:
        one_line(error)
    else:
        assert_finite(config)


field_text = st.one_of(st.text(max_size=30), st.sampled_from(["", "\x00", "\ud7ff", "é" * 10, "#### 3"]))
rows = st.one_of(
    st.fixed_dictionaries({"instruction": field_text, "output": field_text}),
    st.dictionaries(st.sampled_from(["instruction", "input", "output", "x"]),
                    st.recursive(st.one_of(field_text, st.integers(), st.floats(), st.none()),
                                 lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
                                 max_leaves=6), max_size=4),
)


def encode(kind: str, data_rows: list) -> bytes:
    if kind == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in data_rows).encode("utf-8", "surrogatepass")
    if kind == "json":
        return json.dumps(data_rows, ensure_ascii=False).encode("utf-8", "surrogatepass")
    lines = ["instruction,output"] + [f"{json.dumps(row.get('instruction'))},{json.dumps(row.get('output'))}"
                                      for row in data_rows if isinstance(row, dict)]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["jsonl", "json", "csv"]), data_rows=st.lists(rows, max_size=6), change=st.one_of(st.none(), edits))
def test_any_data_file_loads_or_fails_in_one_line(kind, data_rows, change, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / f"rows.{kind}"
    content = encode(kind, data_rows)
    path.write_bytes(content if change is None else mutate(content, change))
    try:
        examples = load_examples("alpaca", str(path))
    except ZofedError as error:
        one_line(error)
    else:
        assert examples


def state(round: int) -> Checkpoint:
    return Checkpoint(round, ServerState(weights={"w": torch.full((4,), float(round))}, buffers={"m": torch.zeros(2)},
                                         info={"step": round}), {"history": [{"round": round, "loss": 1.5}]})


def files_under(root) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


checkpoint_files = st.sampled_from(["ckpt-00002/state.json", "ckpt-00002/state.safetensors", "ckpt-00002/manifest.json",
                                    "ckpt-00001/state.json", "ckpt-00001/state.safetensors", "LATEST"])


@FAST
@given(damage=st.lists(st.tuples(checkpoint_files, st.one_of(edits, st.binary(max_size=64), st.integers(0, 200))),
                       min_size=1, max_size=3))
def test_a_damaged_checkpoint_falls_back_or_fails_in_one_line_deleting_nothing(damage, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(directory, state(1))
    save_checkpoint(directory, state(2))
    for name, how in damage:
        path = directory / name
        data = path.read_bytes()
        # edits, a replacement, or a truncation to n bytes
        path.write_bytes(mutate(data, how) if isinstance(how, list) else how if isinstance(how, bytes) else data[:how])
    before = files_under(directory)
    try:
        loaded = load_latest_checkpoint(directory, warn=lambda message: one_line(ZofedError(message)))
    except CheckpointError as error:
        one_line(error)
    else:
        assert loaded is not None
        # whatever loads is a checkpoint as it was saved: damage is never taken for content
        expected = state(loaded.round)
        assert loaded.round in (1, 2) and torch.equal(loaded.state.weights["w"], expected.state.weights["w"])
        assert loaded.extra == expected.extra and loaded.state.info == expected.state.info
    assert files_under(directory) == before


@pytest.mark.parametrize("field", ["round", "extra", "info"])
def test_a_checkpoint_edited_consistently_except_for_its_manifest_is_refused(field, tmp_path):
    path = save_checkpoint(tmp_path, state(2))
    document = json.loads((path / "state.json").read_text())
    document[field] = {"round": 7, "extra": {"history": []}, "info": {"step": 99}}[field]
    (path / "state.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="content hash"):
        load_latest_checkpoint(tmp_path)
