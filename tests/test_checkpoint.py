"""Checkpoints: round trip, any damage or edit detected by the manifest's hashes (tensors, state JSON,
bookkeeping), a fallback to the previous good one, torn writes ignored, only two kept, LATEST
confined to checkpoints/, and nothing deleted when none verifies."""

import json
import os

import pytest
import torch

from zofed.algorithms import ServerState
from zofed.checkpoint import Checkpoint, CheckpointError, load_latest_checkpoint, save_checkpoint


def checkpoint(round: int) -> Checkpoint:
    state = ServerState(weights={"w": torch.full((3,), float(round))}, buffers={"m": torch.ones(2)},
                        info={"round": round, "nested": {"a": [1, 2]}})
    return Checkpoint(round=round, state=state, extra={"history": [round]})


def files_under(root) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_round_trip(tmp_path):
    save_checkpoint(tmp_path, checkpoint(3))
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded.round == 3 and torch.equal(loaded.state.weights["w"], torch.full((3,), 3.0))
    assert torch.equal(loaded.state.buffers["m"], torch.ones(2)) and loaded.state.info["nested"] == {"a": [1, 2]}
    assert loaded.extra == {"history": [3]}


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one_with_a_message(tmp_path):
    save_checkpoint(tmp_path, checkpoint(1))
    latest = save_checkpoint(tmp_path, checkpoint(2))
    tensors = latest / "state.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    tensors.write_bytes(bytes(data))
    messages = []
    loaded = load_latest_checkpoint(tmp_path, warn=messages.append)
    assert loaded.round == 1
    assert len(messages) == 1 and "ckpt-00002" in messages[0] and "hash" in messages[0]


def edit_round(path, text):
    document = (path / "state.json").read_text()
    (path / "state.json").write_text(document.replace('"round": 2', f'"round": {text}', 1))


DAMAGE = {
    "round edited": lambda path: edit_round(path, "7"),
    "round 1e400": lambda path: edit_round(path, "1e400"),
    "state.json holding []": lambda path: (path / "state.json").write_text("[]"),
    "extra edited": lambda path: (path / "state.json").write_text(
        (path / "state.json").read_text().replace('"history": [2]', '"history": []')),
    "truncated tensors": lambda path: (path / "state.safetensors").write_bytes((path / "state.safetensors").read_bytes()[:40]),
    "no tensor file": lambda path: (path / "state.safetensors").unlink(),
    "manifest []": lambda path: (path / "manifest.json").write_text("[]"),
    "manifest deeply nested": lambda path: (path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000),
    "no manifest": lambda path: (path / "manifest.json").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_any_damaged_or_edited_checkpoint_falls_back_to_the_previous_good_one(damage, tmp_path):
    save_checkpoint(tmp_path, checkpoint(1))
    DAMAGE[damage](save_checkpoint(tmp_path, checkpoint(2)))
    messages = []
    loaded = load_latest_checkpoint(tmp_path, warn=messages.append)
    assert loaded.round == 1 and loaded.extra == {"history": [1]}
    assert len(messages) == 1 and "ckpt-00002" in messages[0]


@pytest.mark.parametrize("damage", DAMAGE)
def test_with_no_good_checkpoint_left_it_stops_in_one_line_and_deletes_nothing(damage, tmp_path):
    DAMAGE[damage](save_checkpoint(tmp_path, checkpoint(2)))
    before = files_under(tmp_path)
    with pytest.raises(CheckpointError, match="ckpt-00002") as raised:
        load_latest_checkpoint(tmp_path, warn=pytest.fail)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 300
    assert files_under(tmp_path) == before


def test_a_checkpoint_of_the_old_layout_with_kept_client_models_is_refused_asking_for_a_restart(tmp_path):
    path = tmp_path / "ckpt-00002"
    path.mkdir()
    (path / "state.safetensors").write_bytes(b"")
    (path / "state.json").write_text(json.dumps({"round": 2, "tensors_sha256": "0" * 64, "weight_names": ["w"],
                                                 "buffer_names": [], "kept": {"4": [1, 1]}, "info": {}, "extra": {}}))
    (tmp_path / "LATEST").write_text("ckpt-00002")
    with pytest.raises(CheckpointError, match="kept models.*start the run over"):
        load_latest_checkpoint(tmp_path)


@pytest.mark.parametrize("pointer", ["../outside", "/etc", "ckpt-00002/../../outside", "ckpt-00009"])
def test_latest_is_confined_to_the_checkpoint_directory(pointer, tmp_path):
    directory = tmp_path / "checkpoints"
    save_checkpoint(directory, checkpoint(1))
    # a checkpoint that verifies, outside checkpoints/: never loaded
    save_checkpoint(tmp_path / "outside-store", checkpoint(5))
    os.rename(tmp_path / "outside-store" / "ckpt-00005", tmp_path / "outside")
    (directory / "LATEST").write_text(pointer)
    assert load_latest_checkpoint(directory, warn=pytest.fail).round == 1


def test_a_symlinked_checkpoint_is_not_followed(tmp_path):
    save_checkpoint(tmp_path / "elsewhere", checkpoint(5))
    directory = tmp_path / "checkpoints"
    save_checkpoint(directory, checkpoint(1))
    (directory / "ckpt-00005").symlink_to(tmp_path / "elsewhere" / "ckpt-00005")
    (directory / "LATEST").write_text("ckpt-00005")
    assert load_latest_checkpoint(directory, warn=pytest.fail).round == 1


def test_torn_writes_are_ignored_and_only_two_are_kept(tmp_path):
    for round in (1, 2, 3):
        save_checkpoint(tmp_path, checkpoint(round))
    (tmp_path / ".ckpt-torn").mkdir()  # a staging directory left by a kill mid-write
    (tmp_path / "ckpt-00004").mkdir()  # a directory without its files
    assert sorted(p.name for p in tmp_path.glob("ckpt-0000[123]")) == ["ckpt-00002", "ckpt-00003"]
    messages = []
    assert load_latest_checkpoint(tmp_path, warn=messages.append).round == 3
    assert messages == []  # LATEST points at ckpt-00003: the bare directory is never tried first


def test_no_checkpoint_is_none(tmp_path):
    assert load_latest_checkpoint(tmp_path / "missing") is None
    assert load_latest_checkpoint(tmp_path) is None


def test_the_checkpoint_module_imports_no_runtime_module():
    import zofed.checkpoint as module

    source = open(module.__file__).read()
    assert "zofed.runtime" not in source
