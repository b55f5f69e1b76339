"""Atomic file writes: a kill or a full disk leaves the old file or the new one, never half of one.

Every file zofed replaces (summaries, configs, checkpoints, kept models, plots) goes through
`atomic_path`: the content is written to a staging file beside the target, flushed to disk, renamed
over the target, and the directory is flushed too, because a rename is durable only once its
directory entry is. A write that fails (ENOSPC, a kill) removes its staging file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A staging path to write `path`'s new content to (by any writer: safetensors, matplotlib, ...)."""
    path = Path(path)
    # the suffix stays last: writers such as matplotlib pick the format from it
    staging = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield staging
        fsync_file(staging)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_atomic(path: Path, data: bytes | str) -> None:
    with atomic_path(path) as staging:
        staging.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
