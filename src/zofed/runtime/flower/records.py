"""Our messages and kept models in Flower records, and the client number a node plays.

A codec message rides as raw bytes, never re-encoded: a small one (seeds and scalars, a replay)
as one bytes value of a ConfigRecord, the record type with the least framing (measured: 293
bytes of Flower objects around a 356-byte seed upload, against 605 in an ArrayRecord); a large
one (weights) as one uint8 Array of an ArrayRecord, which Flower transfers in chunks. The
client's runtime measurements (seconds, peak memory, model load, ...) ride in the same ConfigRecord
as one packed bytes value;
its train metrics are already in the codec message.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from zofed.errors import ZofedError

if TYPE_CHECKING:  # a node's hello imports this module and must not pay for torch (client_app's docstring)
    import torch

    from zofed.runtime.client import KeptInMemory

CODEC_STYPE = "zofed.codec"
LARGE = 1 << 20  # bytes from which a message travels as a chunked Array
PAYLOAD = "zofed"  # ConfigRecord: "message" (small codec bytes) and the client's runtime measurements
LARGE_PAYLOAD = "zofed.large"  # ArrayRecord: "message", a uint8 Array of the codec bytes
RUN = "zofed.run"  # ConfigRecord: the run's config, sent once per node
NODE = "zofed.node"  # ConfigRecord: the node's partition id, in a query reply
KEPT = "zofed.kept"  # ArrayRecord in Context state: the client's kept model (safetensors bytes, version in metadata)
RUNTIME_KEYS = ("seconds", "peak_rss_mb", "setup_s", "model_load_s", "model_load_cpu_s", "process_start_s", "imports_s", "imports_cpu_s",
                "peak_device_mb", "worker_start_s", "handoff_s")


def pack(data: bytes, runtime: dict[str, float] | None = None) -> RecordDict:
    values: dict = {}
    if runtime:
        unknown = set(runtime) - set(RUNTIME_KEYS)
        if unknown:
            raise ValueError(f"unknown runtime measurements {sorted(unknown)}")
        # One bytes value of float64s in RUNTIME_KEYS order (NaN: not measured): a ConfigRecord
        # entry per measurement would cost its key and framing each (measured: 24 bytes apiece).
        values["runtime"] = struct.pack(f"<{len(RUNTIME_KEYS)}d", *(_measured(runtime.get(key)) for key in RUNTIME_KEYS))
    if len(data) < LARGE:
        return RecordDict({PAYLOAD: ConfigRecord({"message": bytes(data), **values})})
    large = ArrayRecord({"message": Array("uint8", (len(data),), CODEC_STYPE, bytes(data))})
    return RecordDict({PAYLOAD: ConfigRecord(values), LARGE_PAYLOAD: large})


def _measured(value: float | None) -> float:
    return math.nan if value is None else float(value)


def unpack(content: RecordDict) -> bytes:
    if LARGE_PAYLOAD in content:
        array = content.array_records[LARGE_PAYLOAD]["message"]
        if array.stype != CODEC_STYPE:
            raise ZofedError(f"a Flower message carries '{array.stype}' where a zofed message was expected")
        return array.data
    if PAYLOAD not in content or "message" not in content.config_records[PAYLOAD]:
        raise ZofedError("a Flower message without a zofed message in it")
    return bytes(content.config_records[PAYLOAD]["message"])


def runtime_measurements(content: RecordDict) -> dict[str, float]:
    record = content.config_records[PAYLOAD]
    if "runtime" not in record:
        return {}
    values = struct.unpack(f"<{len(RUNTIME_KEYS)}d", bytes(record["runtime"]))
    return {key: value for key, value in zip(RUNTIME_KEYS, values) if not math.isnan(value)}


class ContextKept:
    """A client's kept model in its node's Context state (lives as long as the node).

    Node state is memory by definition, so this copy is the kept file's bytes held in memory,
    beside the model: a SuperNode with `state-dir` keeps it on its disk instead (`KeptFile`).
    """

    def __init__(self, context: Context) -> None:
        self.state = context.state

    def _held(self) -> KeptInMemory:
        from zofed.runtime.client import KeptInMemory

        return KeptInMemory(self.data)

    @property
    def data(self) -> bytes | None:
        """The kept file's bytes (None: none kept); a warm worker gets them with the message."""
        return self.state.array_records[KEPT]["model"].data if KEPT in self.state else None

    def put(self, data: bytes | None) -> None:
        """Keep these file bytes (None: keep nothing), as a warm worker's round left them."""
        if data is None:
            self.forget()
        else:
            self.state[KEPT] = ArrayRecord({"model": Array("uint8", (len(data),), "safetensors", data)})

    @property
    def version(self) -> int | None:
        return self._held().version

    def load_into(self, tensors: Sequence[torch.Tensor]) -> None:
        self._held().load_into(tensors)

    def save_from(self, version: int, tensors: Sequence[torch.Tensor]) -> None:
        from zofed.runtime.client import KeptInMemory

        held = KeptInMemory()
        held.save_from(version, tensors)
        self.put(held.data)

    def forget(self) -> None:
        self.state.pop(KEPT, None)


def partition_id(context: Context) -> int:
    """The client this node plays, from its node config (`--node-config 'partition-id=K'`)."""
    if "partition-id" not in context.node_config:
        raise ZofedError("this SuperNode has no partition-id; start it with --node-config 'partition-id=K'")
    value = context.node_config["partition-id"]
    if type(value) is not int or value < 0:
        raise ZofedError(f"partition-id {str(value)[:40]!r} is not a client number; start the SuperNode with "
                         "--node-config 'partition-id=K' for a whole number K")
    return value
