"""Codec bytes and kept models through Flower records, without starting Flower."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Context, RecordDict  # noqa: E402

from zofed.runtime.client import KeptFile  # noqa: E402
from zofed.runtime.flower.records import LARGE, ContextKept, pack, runtime_measurements, unpack  # noqa: E402


@pytest.mark.parametrize("size", [0, 356, LARGE + 5])
def test_codec_bytes_come_back_unchanged(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    content = pack(data, {"seconds": 1.5, "peak_rss_mb": 10.0})
    assert unpack(content) == data
    assert runtime_measurements(content) == {"seconds": 1.5, "peak_rss_mb": 10.0}
    assert ("zofed.large" in content) == (size >= LARGE)


def test_kept_models_round_trip_in_context_state_and_files(tmp_path):
    model = (torch.randn(2, 3), torch.ones(4, dtype=torch.bfloat16))
    into = tuple(torch.zeros_like(tensor) for tensor in model)
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    for kept in (ContextKept(context), KeptFile(tmp_path / "state" / "kept-0.safetensors")):
        assert kept.version is None
        kept.save_from(3, model)
        assert kept.version == 3
        kept.load_into(into)
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(model, into))
        kept.forget()
        assert kept.version is None
    assert ContextKept(context).version is None  # the node's state, not the object, holds the copy


def test_runtime_measurements_cost_little_more_than_their_floats():
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from zofed.runtime.flower.records import RUNTIME_KEYS

    def flower_bytes(content) -> int:
        return sum(len(part.deflate()) for part in get_all_nested_objects(content).values())

    data = bytes(237)  # a two-step seed upload
    measured = {key: 1.0 + i for i, key in enumerate(RUNTIME_KEYS)}
    assert runtime_measurements(pack(data, measured)) == measured
    assert flower_bytes(pack(data, measured)) - flower_bytes(pack(data)) <= 8 * len(RUNTIME_KEYS) + 32
    with pytest.raises(ValueError, match="unknown"):
        pack(data, {"secnds": 1.0})
