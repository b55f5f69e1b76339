"""Our messages and kept models in Flower records.

A codec message rides as one uint8 Array with stype "zofed.codec": Flower adds its own small
framing around it, never a re-encoding of our seeds and scalars.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from flwr.app import Array, ArrayRecord, Context, MetricRecord, RecordDict
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from zofed.errors import ZofedError
from zofed.runtime.client import KeptModel

CODEC_STYPE = "zofed.codec"
PAYLOAD = "zofed.payload"  # ArrayRecord holding the codec bytes
CLIENT_ROW = "zofed.client"  # MetricRecord: the client's metrics row (seconds, memory, train metrics)
RUN = "zofed.run"  # ConfigRecord: the run's config, sent once per node
NODE = "zofed.node"  # ConfigRecord: the node's partition id, in a query reply
KEPT = "zofed.kept"  # ArrayRecord in Context state: the client's kept model (safetensors bytes, version in metadata)


def pack(data: bytes, row: dict | None = None) -> RecordDict:
    content = RecordDict({PAYLOAD: ArrayRecord({"message": Array("uint8", (len(data),), CODEC_STYPE, bytes(data))})})
    if row is not None:
        content[CLIENT_ROW] = MetricRecord({key: value for key, value in row.items() if value is not None})
    return content


def unpack(content: RecordDict) -> bytes:
    array = content.array_records[PAYLOAD]["message"]
    if array.stype != CODEC_STYPE:
        raise ZofedError(f"a Flower message carries '{array.stype}' where a zofed message was expected")
    return array.data


def client_row(content: RecordDict) -> dict:
    row = dict(content.metric_records[CLIENT_ROW])
    row["client"] = int(row["client"])
    return row


class ContextKeptStore:
    """A client's kept model in its node's Context state (lives as long as the node)."""

    def __init__(self, context: Context) -> None:
        self.state = context.state

    def load(self, client: int) -> KeptModel | None:
        if KEPT not in self.state:
            return None
        return _kept_from_bytes(self.state.array_records[KEPT]["model"].data)

    def save(self, client: int, kept: KeptModel | None) -> None:
        if kept is None:
            self.state.pop(KEPT, None)
            return
        data = _kept_to_bytes(kept)
        self.state[KEPT] = ArrayRecord({"model": Array("uint8", (len(data),), "safetensors", data)})


class FileKeptStore:
    """A client's kept model in a node-local safetensors file, so it survives a SuperNode restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, client: int) -> Path:
        return self.directory / f"kept-{client}.safetensors"

    def load(self, client: int) -> KeptModel | None:
        path = self._path(client)
        return _kept_from_bytes(path.read_bytes()) if path.is_file() else None

    def save(self, client: int, kept: KeptModel | None) -> None:
        path = self._path(client)
        if kept is None:
            path.unlink(missing_ok=True)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp")
        staging.write_bytes(_kept_to_bytes(kept))
        staging.replace(path)  # tensors and version in one file, replaced atomically


def _kept_to_bytes(kept: KeptModel) -> bytes:
    tensors = {str(i): tensor.detach().contiguous() for i, tensor in enumerate(kept.tensors)}
    return safetensors_save(tensors, metadata={"version": str(kept.version)})


def _kept_from_bytes(data: bytes) -> KeptModel:
    (header_length,) = struct.unpack_from("<Q", data, 0)
    version = int(json.loads(data[8 : 8 + header_length])["__metadata__"]["version"])
    tensors = safetensors_load(bytes(data))
    return KeptModel(version, tuple(tensors[str(i)] for i in range(len(tensors))))
