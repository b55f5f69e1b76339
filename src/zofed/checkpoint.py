"""Atomic, verifiable checkpoints: safetensors for tensors, JSON for the rest, a manifest of both.

Each checkpoint is a directory `ckpt-RRRRR/` written under a temporary name and renamed into
place, then `LATEST` is replaced atomically to point at it. `manifest.json` holds the SHA-256 of
every other file's bytes, so the hash covers everything a resume reads (tensors, round, server
state, run bookkeeping): a torn, damaged or edited checkpoint is detected on load and the previous
good one is used instead. Everything random in a run is derived from (seed, round, client), so the
round number is the whole RNG state.

A checkpoint is untrusted input like any file: nothing in it is followed outside `checkpoints/`
(`LATEST` names a sibling `ckpt-*` directory or is ignored), and one that does not verify is
reported, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from zofed.algorithms.base import ServerState
from zofed.atomic import atomic_path, fsync_directory, fsync_file, write_atomic
from zofed.errors import ZofedError

KEEP = 2
FORMAT = 2  # 1: tensors hashed alone (and, before that, clients' kept models inside); refused now
TENSORS_FILE = "state.safetensors"
JSON_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
_NAME = re.compile(r"ckpt-(\d{5,})")
_LATEST_BYTES = 64  # "ckpt-RRRRR\n" and then some; more is not a pointer


class CheckpointError(ZofedError):
    """Checkpoints exist but none verifies; the message says why the newest does not."""


@dataclass(frozen=True)
class Checkpoint:
    round: int
    state: ServerState
    extra: dict[str, Any]  # runtime bookkeeping: metrics history, initial evaluation, elapsed time, data hashes


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"ckpt-{checkpoint.round:05d}"
    staging = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=directory))
    try:
        tensors = {f"weights/{k}": v.contiguous() for k, v in checkpoint.state.weights.items()}
        tensors |= {f"buffers/{k}": v.contiguous() for k, v in checkpoint.state.buffers.items()}
        save_file(tensors, str(staging / TENSORS_FILE))
        document = {
            "round": checkpoint.round,
            "weight_names": list(checkpoint.state.weights),
            "buffer_names": list(checkpoint.state.buffers),
            "info": checkpoint.state.info,
            "extra": checkpoint.extra,
        }
        (staging / JSON_FILE).write_text(json.dumps(document, allow_nan=True))
        manifest = {"format": FORMAT, "sha256": {name: _sha256(staging / name) for name in (TENSORS_FILE, JSON_FILE)}}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest))
        for item in staging.iterdir():
            fsync_file(item)
        fsync_directory(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(directory)
    write_atomic(directory / LATEST_FILE, target.name)
    for old in _checkpoints(directory)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _warn(message: str) -> None:
    print(f"zofed: warning: {message}", file=sys.stderr, flush=True)  # stdout carries the summary


def load_latest_checkpoint(directory: Path, warn=_warn) -> Checkpoint | None:
    """The newest checkpoint that verifies, or None when there is none.

    Raises `CheckpointError` when checkpoints exist but none verifies (nothing is deleted); a
    fallback to an older one is reported through `warn`.
    """
    directory = Path(directory)
    if not directory.is_dir() or directory.is_symlink():
        return None
    candidates = _checkpoints(directory)
    pointed = _latest(directory)
    if pointed is not None and pointed in candidates:
        candidates = [pointed] + [c for c in candidates if c != pointed]
    failures = []
    for candidate in candidates:
        try:
            checkpoint = _load(candidate)
        except _Invalid as error:
            failures.append(f"{candidate.name} {error}")
            continue
        for failure in failures:
            warn(f"checkpoint {failure}; using {candidate.name}")
        return checkpoint
    if failures:
        raise CheckpointError(f"no checkpoint in '{directory}' verifies ({failures[0]})")
    return None


def _checkpoints(directory: Path) -> list[Path]:
    """The `ckpt-RRRRR` directories (not links) under `directory`, newest first."""
    found = [path for path in directory.iterdir() if _NAME.fullmatch(path.name) and path.is_dir() and not path.is_symlink()]
    return sorted(found, key=lambda path: int(path.name[5:]), reverse=True)


def _latest(directory: Path) -> Path | None:
    """The checkpoint `LATEST` names: a `ckpt-RRRRR` beside it, never a path elsewhere (else None)."""
    path = directory / LATEST_FILE
    if path.is_symlink() or not path.is_file():
        return None
    with open(path, "rb") as handle:
        name = handle.read(_LATEST_BYTES).decode("ascii", errors="replace").strip()
    return directory / name if _NAME.fullmatch(name) else None


class _Invalid(Exception):
    """Why one checkpoint cannot be used (short: it ends up in a one-line message)."""


def _load(path: Path) -> Checkpoint:
    manifest = _read_json(path / MANIFEST_FILE, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _Invalid(f"has no manifest of format {FORMAT} (written by an older zofed, or damaged)")
    sha = manifest.get("sha256")
    for name in (TENSORS_FILE, JSON_FILE):
        if not isinstance(sha, dict) or not (path / name).is_file() or sha.get(name) != _sha256(path / name):
            raise _Invalid(f"fails its content hash ({name} damaged, edited or missing)")
    document = _read_json(path / JSON_FILE, JSON_FILE)
    if not isinstance(document, dict):
        raise _Invalid(f"has a {JSON_FILE} that is not an object")
    round = document.get("round")
    if type(round) is not int or f"ckpt-{round:05d}" != path.name:
        raise _Invalid(f"has a round that is not its directory's ({path.name})")
    weight_names, buffer_names = document.get("weight_names"), document.get("buffer_names")
    info, extra = document.get("info"), document.get("extra")
    if not all(isinstance(names, list) and all(isinstance(name, str) for name in names)
               for names in (weight_names, buffer_names)) or not isinstance(info, dict) or not isinstance(extra, dict):
        raise _Invalid(f"has a {JSON_FILE} without its fields")
    try:
        tensors = load_file(str(path / TENSORS_FILE))
    except Exception as error:  # safetensors raises its own error types
        raise _Invalid(f"has an unreadable {TENSORS_FILE} ({type(error).__name__})") from None
    expected = {f"weights/{name}" for name in weight_names} | {f"buffers/{name}" for name in buffer_names}
    if set(tensors) != expected:
        raise _Invalid(f"has tensors its {JSON_FILE} does not name")
    state = ServerState(
        weights={name: tensors[f"weights/{name}"] for name in weight_names},
        buffers={name: tensors[f"buffers/{name}"] for name in buffer_names},
        info=info,
    )
    return Checkpoint(round=round, state=state, extra=extra)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        if what == "manifest" and (path.parent / JSON_FILE).is_file() and _holds_kept_models(path.parent):
            raise _Invalid("holds clients' kept models, written by an older zofed that cannot be resumed; "
                           "start the run over") from None
        raise _Invalid(f"has no {path.name} (written by an older zofed, or damaged)") from None
    except (OSError, ValueError, RecursionError):
        raise _Invalid(f"has an unreadable {path.name}") from None


def _holds_kept_models(path: Path) -> bool:
    """An older checkpoint that carried the simulated clients' models (a layout no longer read)."""
    try:
        return bool(json.loads((path / JSON_FILE).read_bytes()).get("kept"))
    except (OSError, ValueError, RecursionError, AttributeError):
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """A standalone safetensors file of trainable weights, written atomically."""
    with atomic_path(path) as staging:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(staging))
