"""Checkpoints: round trip, corruption detected by content hash, torn writes ignored, only two kept."""

import torch

from zofed.algorithms import ServerState
from zofed.checkpoint import Checkpoint, load_latest_checkpoint, save_checkpoint
from zofed.runtime.client import KeptModel


def checkpoint(round: int) -> Checkpoint:
    state = ServerState(weights={"w": torch.full((3,), float(round))}, buffers={"m": torch.ones(2)},
                        info={"round": round, "nested": {"a": [1, 2]}})
    kept = {4: KeptModel(round - 1, (torch.full((3,), round - 1.0),))}
    return Checkpoint(round=round, state=state, extra={"history": [round]}, kept=kept)


def test_round_trip_with_kept_client_models(tmp_path):
    save_checkpoint(tmp_path, checkpoint(3))
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded.round == 3 and torch.equal(loaded.state.weights["w"], torch.full((3,), 3.0))
    assert torch.equal(loaded.state.buffers["m"], torch.ones(2)) and loaded.state.info["nested"] == {"a": [1, 2]}
    assert loaded.kept[4].version == 2 and torch.equal(loaded.kept[4].tensors[0], torch.full((3,), 2.0))
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
