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
The views are `ReadOnlyTensor`s: a write into them raises instead of changing the message's
bytes (which Python may hold immutable, or the sender may still use); copy before writing.

Decoding is the trust boundary for bytes from the network: every failure in it is a CodecError
(a malformed or hostile message is rejected, never half-applied), JSON headers are bounded in
size and depth, counts are non-negative integers, and a tensor blob must be exactly what
safetensors writes (no overlapping tensors, repeated names, gaps or trailing bytes).
"""

from __future__ import annotations

import json
import math
import re
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save as safetensors_save

from zofed.messages import PAYLOAD_KINDS, Message
from zofed.zo.seeds import SEED_LIMIT

MAGIC = b"ZOF1"
_HEADER_LENGTH = struct.Struct("<I")
_BLOB_HEADER_LENGTH = struct.Struct("<Q")
_ALIGNMENT = 8
MAX_HEADER_BYTES = 4 << 20  # a message's or a tensor blob's JSON header; honest ones are a few kB
MAX_JSON_DEPTH = 32  # honest headers nest 3 deep (config -> replay -> segments)
MAX_TENSOR_DIMS = 16
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_OPENING = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSING = np.frombuffer(b"]}", dtype=np.uint8)
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
    """The ledger's split of an encoded message, read from its header (what the receiver counts).

    Checks the header as `decode` does (not the tensors), so bytes it accepts are counted exactly.
    """
    header, _ = _guarded(_checked_header, data)
    tensor_bytes, records = header["tensor_bytes"], 8 * header["seeds"] + 4 * header["scalars"]
    metrics = len(json.dumps(header["metrics"], separators=(",", ":"), allow_nan=True).encode("utf-8"))
    control = len(data) - tensor_bytes - records - metrics
    return EncodedSizes(weights=tensor_bytes, records=records, metrics=metrics, control=control)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """The message in `data`; its tensors are read-only views of `data` (see `ReadOnlyTensor`).

    Anything wrong with the bytes, however they were made, is a CodecError: nothing else escapes.
    """
    return _guarded(_decode, data)


def _guarded(read, data):
    try:
        return read(data)
    except CodecError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the bytes hold, the caller sees one error type
        raise CodecError(f"malformed message: {type(error).__name__}: {error}") from error


def _decode(data) -> Message:
    header, offset = _checked_header(data)
    tensor_bytes, n_seeds, n_scalars = header["tensor_bytes"], header["seeds"], header["scalars"]
    tensors = tensor_views(data, offset, tensor_bytes)[0] if tensor_bytes else {}
    offset += tensor_bytes
    seeds = np.frombuffer(data, dtype="<i8", count=n_seeds, offset=offset)
    if n_seeds and int(seeds.min()) < 0:
        raise CodecError("malformed message: a seed is negative (seeds lie in [0, 2^63))")
    scalars = np.frombuffer(data, dtype="<f4", count=n_scalars, offset=offset + 8 * n_seeds)
    return Message(
        kind=header["kind"],
        round=header["round"],
        config=header["config"],
        tensors=tensors,
        seeds=tuple(seeds.tolist()),
        scalars=tuple(float(s) for s in scalars),
        metrics=header["metrics"],
    )


def _checked_header(data) -> tuple[dict, int]:
    """The message's header, every field of it checked, and where its tensor blob starts."""
    header, start, header_length = _read_header(data)
    for key in ("round", "tensor_bytes", "seeds", "scalars"):
        value = header.get(key)
        if type(value) is not int or value < 0:  # not a float, a bool or a string
            raise CodecError(f"malformed message: header field '{key}' must be a non-negative integer")
    offset = start + header_length
    if len(data) != offset + header["tensor_bytes"] + 8 * header["seeds"] + 4 * header["scalars"]:
        raise CodecError("malformed message: its length does not match its header (truncated or trailing bytes)")
    if not isinstance(header.get("config"), dict) or not isinstance(header.get("metrics"), dict):
        raise CodecError("malformed message: its config and metrics must be JSON objects")
    if not isinstance(header.get("kind"), str) or header["kind"] not in PAYLOAD_KINDS:
        raise CodecError(f"malformed message: unknown payload kind {str(header.get('kind'))[:40]!r}")
    return header, offset


def _read_header(data) -> tuple[dict, int, int]:
    """The message's JSON header, where it starts and its length."""
    if len(data) < len(MAGIC) + _HEADER_LENGTH.size or bytes(data[: len(MAGIC)]) != MAGIC:
        raise CodecError("not a zofed message (bad magic or too short)")
    (header_length,) = _HEADER_LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _HEADER_LENGTH.size
    if start + header_length > len(data):
        raise CodecError("malformed message: its header runs past its end")
    header = parse_json(data[start : start + header_length])
    if not isinstance(header, dict):
        raise CodecError("malformed message: its header is not a JSON object")
    return header, start, header_length


def parse_json(raw) -> object:
    """Bounded JSON: at most MAX_HEADER_BYTES, nested at most MAX_JSON_DEPTH deep, no repeated keys.

    NaN and ±Infinity are accepted (a client's train loss may be NaN); the depth is checked before
    parsing, so a deeply nested header cannot exhaust the parser's recursion.
    """
    if len(raw) > MAX_HEADER_BYTES:
        raise CodecError(f"malformed message: a header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    text = bytes(raw).decode("utf-8")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise CodecError(f"malformed message: JSON nested deeper than {MAX_JSON_DEPTH}")
    return json.loads(text, object_pairs_hook=_unique_keys)


def json_depth(text: str) -> int:
    """How deeply `text`'s arrays and objects nest (brackets inside strings do not count)."""
    outside_strings = _JSON_STRING.sub("", text).encode("utf-8")
    codes = np.frombuffer(outside_strings, dtype=np.uint8)
    steps = np.isin(codes, _OPENING).astype(np.int64) - np.isin(codes, _CLOSING).astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise CodecError("malformed message: a JSON object repeats a key")
    return document


def tensor_views(data, offset: int, length: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The safetensors blob at data[offset : offset + length]: read-only tensors viewing `data` (no
    copy), and its metadata. A tensor whose bytes are not aligned for its dtype is copied.

    The blob must be exactly what safetensors writes: known dtypes, list shapes of non-negative
    integers, and tensors that tile its data with no overlap, gap or trailing bytes.
    """
    if length < _BLOB_HEADER_LENGTH.size or offset + length > len(data):
        raise CodecError("malformed message: tensor blob shorter than its header")
    (header_length,) = _BLOB_HEADER_LENGTH.unpack_from(data, offset)
    start = offset + _BLOB_HEADER_LENGTH.size + header_length
    if start > offset + length:
        raise CodecError("malformed message: tensor header runs past its blob")
    header = parse_json(data[offset + _BLOB_HEADER_LENGTH.size : start])
    if not isinstance(header, dict):
        raise CodecError("malformed message: tensor header is not a table")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise CodecError("malformed message: tensor metadata is not a table of strings")
    entries = [(name, *tensor_entry(name, entry, offset + length - start)) for name, entry in header.items()]
    end_of_previous = 0
    for name, _, _, begin, end in sorted(entries, key=lambda item: (item[3], item[4])):
        if begin != end_of_previous:
            raise CodecError(f"malformed message: tensor '{name}' overlaps another or leaves a gap before it")
        end_of_previous = end
    if end_of_previous != offset + length - start:
        raise CodecError("malformed message: the tensor blob has bytes no tensor uses")
    tensors = {}
    with warnings.catch_warnings():
        # bytes are immutable and torch warns that it cannot enforce that; ReadOnlyTensor does
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        for name, dtype, shape, begin, end in entries:
            count = math.prod(shape)
            if count == 0:
                tensors[name] = torch.empty(shape, dtype=dtype)
                continue
            tensor = torch.frombuffer(data, dtype=dtype, count=count, offset=start + begin).view(shape)
            if tensor.data_ptr() % dtype.itemsize == 0:
                tensor = tensor.as_subclass(ReadOnlyTensor)
            else:
                tensor = tensor.clone()
            tensors[name] = tensor
    return tensors, metadata


def tensor_entry(name: str, entry, data_length: int) -> tuple[torch.dtype, list[int], int, int]:
    """One safetensors header entry, checked: its dtype, shape and [begin, end) in the blob's data."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CodecError(f"malformed message: tensor '{name}' needs exactly dtype, shape and data_offsets")
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise CodecError(f"malformed message: tensor '{name}' has no known dtype")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS \
            or not all(type(size) is int and 0 <= size <= max(data_length, 1) for size in shape):
        raise CodecError(f"malformed message: tensor '{name}' needs a list shape of at most {MAX_TENSOR_DIMS} "
                         "non-negative sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(bound) is int for bound in offsets):
        raise CodecError(f"malformed message: tensor '{name}' needs data_offsets [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_length or end - begin != math.prod(shape) * dtype.itemsize:
        raise CodecError(f"malformed message: tensor '{name}' does not match its bytes")
    return dtype, shape, begin, end


class ReadOnlyTensor(torch.Tensor):
    """A tensor that views a message's bytes and refuses every write into them.

    torch has no read-only tensors, and a write through a view of `bytes` would change an object
    Python holds immutable (or the sender's buffer). Reading costs nothing extra; an in-place
    operation on it (or an `out=` into it) raises `ReadOnlyError`: copy it first (`.clone()`).
    Results that share its memory (views, `.data`, `.contiguous()`) stay read-only, other results
    are plain tensors, and `.numpy()` gives a read-only array. Not guarded: a raw pointer or
    `untyped_storage()`, deliberate escapes.
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        in_place = (name.endswith("_") and (not name.startswith("_") or name.startswith("_foreach_"))
                    and name not in _NOT_WRITES) or name in _WRITING_DUNDERS or bool(kwargs.get("inplace"))
        written = [*_tensors_in(args[0] if in_place and args else None), *_tensors_in(kwargs.get("out"))]
        if any(isinstance(tensor, ReadOnlyTensor) for tensor in written):
            raise ReadOnlyError(f"'{name}' would write into a decoded message's bytes; clone the tensor first")
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
            protected = {_storage_of(arg) for arg in args if isinstance(arg, ReadOnlyTensor)}
            return _keep_read_only(result, protected - {None})


class ReadOnlyError(RuntimeError):
    """A write into a decoded message's bytes."""


_NOT_WRITES = frozenset({"requires_grad_", "detach_", "retain_grad"})
_WRITING_DUNDERS = frozenset({"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                              "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
                              "__imatmul__"})


def _tensors_in(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _storage_of(tensor: torch.Tensor) -> int | None:
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse and other layouts without one storage
        return None


def _keep_read_only(result, protected: set[int]):
    """`result` as read-only where it shares a read-only argument's memory, else plain."""
    if isinstance(result, torch.Tensor):
        shares = _storage_of(result) in protected
        return result.as_subclass(ReadOnlyTensor if shares else torch.Tensor)
    if isinstance(result, np.ndarray):
        result.flags.writeable = False
        return result
    if isinstance(result, (tuple, list)):
        return type(result)(_keep_read_only(item, protected) for item in result)
    return result


def _contiguous(tensors) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().contiguous() for name, tensor in tensors.items()}
