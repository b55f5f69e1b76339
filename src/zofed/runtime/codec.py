"""Messages <-> bytes. Every byte the ledger counts is a byte this codec produced.

Layout: magic, u32 header length, JSON header (kind, round, config, metrics, counts), then the
tensors as a safetensors blob, then seeds as little-endian int64 and scalars as float32. Scalars
are float32 on the wire; algorithms round g to float32 before using it, so the value a client
applied is exactly the value the server replays.

Decoded tensors are views of the message's bytes, not copies: a client receiving the weights
holds them once (the bytes) until it has loaded them into its model, where `safetensors.torch.load`
would hold a slice of the bytes and the tensors besides, three copies of the largest thing it ever
receives. So the JSON header of a message with tensors is padded with spaces to end on an 8-byte
boundary: safetensors aligns each tensor within its blob, and the blob then starts aligned too.
The views are read-only by contract (the bytes may be immutable); copy before writing.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save as safetensors_save

from zofed.messages import Message
from zofed.zo.seeds import SEED_LIMIT

MAGIC = b"ZOF1"
_HEADER_LENGTH = struct.Struct("<I")
_BLOB_HEADER_LENGTH = struct.Struct("<Q")
_ALIGNMENT = 8
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


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
    if tensor_blob:
        header_bytes += b" " * (-(len(MAGIC) + _HEADER_LENGTH.size + len(header_bytes)) % _ALIGNMENT)
    records = seeds.astype("<i8").tobytes() + scalars.tobytes()
    # one join, not a chain of +: each + would copy the weights once more
    data = b"".join([MAGIC, _HEADER_LENGTH.pack(len(header_bytes)), header_bytes, tensor_blob, records])
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


def decode(data: bytes | bytearray | memoryview) -> Message:
    try:
        if bytes(data[:4]) != MAGIC:
            raise CodecError("not a zofed message (bad magic)")
        (header_length,) = _HEADER_LENGTH.unpack_from(data, 4)
        start = 4 + _HEADER_LENGTH.size
        header = json.loads(bytes(data[start : start + header_length]).decode("utf-8"))
        offset = start + header_length
        tensor_bytes = int(header["tensor_bytes"])
        tensors = tensor_views(data, offset, tensor_bytes)[0] if tensor_bytes else {}
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


def tensor_views(data, offset: int, length: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The safetensors blob at data[offset : offset + length]: tensors viewing `data` (no copy), and its metadata.

    A tensor whose bytes are not aligned for its dtype (a buffer that starts unaligned) is copied.
    """
    (header_length,) = _BLOB_HEADER_LENGTH.unpack_from(data, offset)
    start = offset + _BLOB_HEADER_LENGTH.size + header_length
    if start > offset + length:
        raise CodecError("malformed message: tensor header runs past its blob")
    header = json.loads(bytes(data[offset + _BLOB_HEADER_LENGTH.size : start]).decode("utf-8"))
    if not isinstance(header, dict):
        raise CodecError("malformed message: tensor header is not a table")
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    with warnings.catch_warnings():
        # bytes are immutable and torch warns that it cannot enforce that; the views are read-only by contract
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        for name, entry in header.items():
            dtype = SAFETENSORS_DTYPES.get(entry["dtype"]) if isinstance(entry, dict) else None
            if dtype is None:
                raise CodecError(f"malformed message: tensor '{name}' has no known dtype")
            shape = [int(size) for size in entry["shape"]]
            begin, end = (int(bound) for bound in entry["data_offsets"])
            count = math.prod(shape)
            if min(shape, default=0) < 0 or not 0 <= begin <= end <= offset + length - start \
                    or (end - begin) != count * dtype.itemsize:
                raise CodecError(f"malformed message: tensor '{name}' does not match its bytes")
            if count == 0:
                tensors[name] = torch.empty(shape, dtype=dtype)
                continue
            tensor = torch.frombuffer(data, dtype=dtype, count=count, offset=start + begin).view(shape)
            tensors[name] = tensor if tensor.data_ptr() % dtype.itemsize == 0 else tensor.clone()
    return tensors, metadata


def _contiguous(tensors) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous() for name, tensor in tensors.items()}
