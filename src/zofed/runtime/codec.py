"""Messages <-> bytes. Every byte the ledger counts is a byte this codec produced.

Layout: magic, u32 header length, JSON header (kind, round, config, metrics, counts), then the
tensors as a safetensors blob, then seeds as little-endian int64 and scalars as float32. Scalars
are float32 on the wire; algorithms round g to float32 before using it, so the value a client
applied is exactly the value the server replays.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from zofed.messages import Message
from zofed.zo.seeds import SEED_LIMIT

MAGIC = b"ZOF1"
_HEADER_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class EncodedSizes:
    """Bytes of one encoded message by what they carry."""

    weights: int
    records: int
    metrics: int
    control: int

    @property
    def total(self) -> int:
        return self.weights + self.records + self.metrics + self.control


class CodecError(ValueError):
    """A message that cannot be decoded: rejected, never applied."""


def encode(message: Message) -> bytes:
    return encode_with_sizes(message)[0]


def encode_with_sizes(message: Message) -> tuple[bytes, EncodedSizes]:
    if any(not 0 <= seed < SEED_LIMIT for seed in message.seeds):
        raise ValueError("seeds must lie in [0, 2^63)")
    seeds = np.asarray(message.seeds, dtype=np.int64)
    scalars = np.asarray(message.scalars, dtype="<f4")
    tensor_blob = safetensors_save(_contiguous(message.tensors)) if message.tensors else b""
    metrics_json = json.dumps(dict(message.metrics), separators=(",", ":"), allow_nan=True)
    header = {
        "kind": message.kind,
        "round": message.round,
        "config": dict(message.config),
        "metrics": "__METRICS__",
        "tensor_bytes": len(tensor_blob),
        "seeds": int(seeds.size),
        "scalars": int(scalars.size),
    }
    header_json = json.dumps(header, separators=(",", ":"), allow_nan=True)
    header_json = header_json.replace('"__METRICS__"', metrics_json, 1)
    header_bytes = header_json.encode("utf-8")
    records = seeds.astype("<i8").tobytes() + scalars.tobytes()
    data = MAGIC + _HEADER_LENGTH.pack(len(header_bytes)) + header_bytes + tensor_blob + records
    metrics_size = len(metrics_json.encode("utf-8"))
    sizes = EncodedSizes(
        weights=len(tensor_blob),
        records=len(records),
        metrics=metrics_size,
        control=len(data) - len(tensor_blob) - len(records) - metrics_size,
    )
    return data, sizes


def sizes_of(data: bytes) -> EncodedSizes:
    """The ledger's split of an encoded message, read from its header (what the receiver counts)."""
    try:
        (header_length,) = _HEADER_LENGTH.unpack_from(data, 4)
        start = 4 + _HEADER_LENGTH.size
        header = json.loads(data[start : start + header_length].decode("utf-8"))
        tensor_bytes = int(header["tensor_bytes"])
        records = 8 * int(header["seeds"]) + 4 * int(header["scalars"])
        metrics = len(json.dumps(header["metrics"], separators=(",", ":"), allow_nan=True).encode("utf-8"))
    except (KeyError, TypeError, ValueError, struct.error, UnicodeDecodeError) as error:
        raise CodecError(f"malformed message: {error}") from error
    control = len(data) - tensor_bytes - records - metrics
    return EncodedSizes(weights=tensor_bytes, records=records, metrics=metrics, control=control)


def decode(data: bytes) -> Message:
    try:
        if data[:4] != MAGIC:
            raise CodecError("not a zofed message (bad magic)")
        (header_length,) = _HEADER_LENGTH.unpack_from(data, 4)
        start = 4 + _HEADER_LENGTH.size
        header = json.loads(data[start : start + header_length].decode("utf-8"))
        offset = start + header_length
        tensor_bytes = int(header["tensor_bytes"])
        tensors = safetensors_load(data[offset : offset + tensor_bytes]) if tensor_bytes else {}
        offset += tensor_bytes
        n_seeds, n_scalars = int(header["seeds"]), int(header["scalars"])
        if len(data) != offset + 8 * n_seeds + 4 * n_scalars:
            raise CodecError("message length does not match its header")
        seeds = np.frombuffer(data, dtype="<i8", count=n_seeds, offset=offset)
        scalars = np.frombuffer(data, dtype="<f4", count=n_scalars, offset=offset + 8 * n_seeds)
        return Message(
            kind=header["kind"],
            round=int(header["round"]),
            config=header["config"],
            tensors=tensors,
            seeds=tuple(int(s) for s in seeds),
            scalars=tuple(float(s) for s in scalars),
            metrics=header["metrics"],
        )
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, struct.error, UnicodeDecodeError) as error:
        raise CodecError(f"malformed message: {error}") from error


def _contiguous(tensors) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous() for name, tensor in tensors.items()}
