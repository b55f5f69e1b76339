"""The safetensors file format, streamed between a file and a model's own tensors.

A client keeps its synced model on its disk between rounds. safetensors' Python API would hold a
whole second copy in memory to do it (`save` builds the file's bytes, `load` reads them, and its
memory-mapped reader leaves every touched page resident, which counts in RSS). Here each tensor's
bytes go from its own buffer to the file (`write(memoryview)`) and back into it (`readinto`), so
no more than one tensor is ever copied: a tensor that is not contiguous, or not on the host,
goes through a host copy of itself alone. The files are plain safetensors (header length, JSON
header with `__metadata__`, the tensors' bytes in order), readable by `safetensors.safe_open`,
and files safetensors wrote are read here.

Reading checks the file against the tensors it fills — names "0".."n-1" (the trainable view's
indices), each one's dtype and shape, bytes that tile the file exactly — and raises a
`TensorFileError` naming what does not match before any tensor is written.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch

from zofed.atomic import atomic_path
from zofed.errors import ZofedError
from zofed.runtime.codec import SAFETENSORS_DTYPES, CodecError, parse_json, tensor_entry

_LENGTH = struct.Struct("<Q")
_ALIGNMENT = 8  # safetensors pads its header so the data starts 8-byte aligned
_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


class TensorFileError(ZofedError):
    """A file that is not the tensors it should hold (corrupt, truncated, or another model's)."""


def save_tensors(path: Path, tensors: Sequence[torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `tensors` to `path` as a safetensors file, atomically (a kill leaves the old file or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as staging, open(staging, "wb") as file:
        write_tensors(file, tensors, metadata)


def load_into(path: Path, tensors: Sequence[torch.Tensor]) -> dict[str, str]:
    """Fill `tensors` in place from the safetensors file at `path`; returns its metadata."""
    with open(path, "rb") as file:
        return read_into(file, tensors, os.fstat(file.fileno()).st_size, str(path))


def read_metadata(path: Path) -> dict[str, str]:
    with open(path, "rb") as file:
        return metadata_of(file, os.fstat(file.fileno()).st_size, str(path))


def metadata_of(file: BinaryIO, size: int, source: str) -> dict[str, str]:
    """The metadata of the safetensors file `file` (`size` bytes long), its header checked."""
    header, _ = _read_header(file, size, source)
    return header.get("__metadata__") or {}


def write_tensors(file: BinaryIO, tensors: Sequence[torch.Tensor], metadata: dict[str, str]) -> None:
    _check_byte_order()
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for i, tensor in enumerate(tensors):
        if tensor.dtype not in _NAMES:
            raise ZofedError(f"tensor {i} is {tensor.dtype}, which a safetensors file cannot hold")
        size = tensor.numel() * tensor.element_size()
        header[str(i)] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % _ALIGNMENT)
    file.write(_LENGTH.pack(len(encoded)))
    file.write(encoded)
    for tensor in tensors:
        host = tensor.detach()
        if host.device.type != "cpu":
            host = host.cpu()
        file.write(_bytes_of(host.contiguous()))


def read_into(file: BinaryIO, tensors: Sequence[torch.Tensor], size: int, source: str) -> dict[str, str]:
    """Fill `tensors` from `file` (`size` bytes long); returns the file's metadata."""
    _check_byte_order()
    header, start = _read_header(file, size, source)
    metadata = header.pop("__metadata__", None) or {}
    if set(header) != {str(i) for i in range(len(tensors))}:
        raise TensorFileError(f"{source} holds {len(header)} tensors, not this model's {len(tensors)}; "
                              "it was written for another model (delete it: the server then sends the weights)")
    spans = []
    for i, tensor in enumerate(tensors):
        try:
            dtype, shape, begin, end = tensor_entry(str(i), header[str(i)], size - start)
        except CodecError as error:
            raise TensorFileError(f"{source} is corrupt ({error}); delete it: the server then sends the weights") from None
        if dtype != tensor.dtype or shape != list(tensor.shape):
            raise TensorFileError(f"{source}: tensor {i} is {dtype} {shape} there but {tensor.dtype} "
                                  f"{list(tensor.shape)} in the model; delete it: the server then sends the weights")
        spans.append((begin, end))
    if not _tiles(spans, size - start):
        raise TensorFileError(f"{source} is corrupt (its tensors do not tile its bytes); delete it: "
                              "the server then sends the weights")
    with torch.no_grad():
        for tensor, (begin, end) in zip(tensors, spans):
            file.seek(start + begin)
            direct = tensor.device.type == "cpu" and tensor.is_contiguous()
            target = tensor.detach() if direct else torch.empty(tensor.shape, dtype=tensor.dtype)
            _read_exactly(file, _bytes_of(target), source)
            if not direct:
                tensor.copy_(target)
    return metadata


def _read_header(file: BinaryIO, size: int, source: str) -> tuple[dict, int]:
    raw = file.read(_LENGTH.size)
    if len(raw) < _LENGTH.size:
        raise TensorFileError(f"{source} is truncated (no header); delete it: the server then sends the weights")
    (length,) = _LENGTH.unpack(raw)
    if _LENGTH.size + length > size:
        raise TensorFileError(f"{source} is truncated (its header runs past its end); delete it: "
                              "the server then sends the weights")
    try:
        header = parse_json(file.read(length))
    except (CodecError, UnicodeDecodeError, ValueError) as error:
        raise TensorFileError(f"{source} is corrupt ({error}); delete it: the server then sends the weights") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(header, dict) or not isinstance(metadata or {}, dict) \
            or not all(isinstance(value, str) for value in (metadata or {}).values()):
        raise TensorFileError(f"{source} is not a safetensors file; delete it: the server then sends the weights")
    return header, _LENGTH.size + length


def _tiles(spans: list[tuple[int, int]], length: int) -> bool:
    """Whether the [begin, end) spans cover 0..length with no gap or overlap."""
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            return False
        covered = end
    return covered == length


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """The contiguous host tensor's own bytes, writable where it is (bf16 too: numpy has no bf16, uint8 is exact)."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def _read_exactly(file: BinaryIO, buffer: memoryview, source: str) -> None:
    done = 0
    while done < len(buffer):
        count = file.readinto(buffer[done:])
        if not count:
            raise TensorFileError(f"{source} is truncated; delete it: the server then sends the weights")
        done += count


def _check_byte_order() -> None:
    if sys.byteorder != "little":
        raise ZofedError("safetensors files are little-endian; this machine is big-endian")
