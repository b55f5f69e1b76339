"""Atomic, verifiable checkpoints: safetensors for tensors, JSON for the rest.

Each checkpoint is a directory `ckpt-RRRRR/` written under a temporary name and renamed into
place, then `LATEST` is replaced atomically to point at it. The JSON holds the SHA-256 of the
tensor file, so a torn or corrupted checkpoint is detected on load and the previous good one is
used instead. Everything random in a run is derived from (seed, round, client), so the round
number is the whole RNG state.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from zofed.algorithms.base import ServerState
from zofed.atomic import atomic_path, fsync_directory, fsync_file, write_atomic
from zofed.runtime.client import KeptModel

KEEP = 2
TENSORS_FILE = "state.safetensors"
JSON_FILE = "state.json"


@dataclass(frozen=True)
class Checkpoint:
    round: int
    state: ServerState
    extra: dict[str, Any]  # runtime bookkeeping: metrics history, initial evaluation, elapsed time
    # simulated clients' model copies: read from older checkpoints; the local runtime now keeps them in a KeptStore
    kept: Mapping[int, KeptModel] = field(default_factory=dict)


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"ckpt-{checkpoint.round:05d}"
    staging = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=directory))
    try:
        tensors = {f"weights/{k}": v.contiguous() for k, v in checkpoint.state.weights.items()}
        tensors |= {f"buffers/{k}": v.contiguous() for k, v in checkpoint.state.buffers.items()}
        for client, model in checkpoint.kept.items():
            tensors |= {f"kept/{client}/{i}": tensor.contiguous() for i, tensor in enumerate(model.tensors)}
        save_file(tensors, str(staging / TENSORS_FILE))
        document = {
            "round": checkpoint.round,
            "tensors_sha256": _sha256(staging / TENSORS_FILE),
            "weight_names": list(checkpoint.state.weights),
            "buffer_names": list(checkpoint.state.buffers),
            "kept": {str(client): [model.version, len(model.tensors)] for client, model in checkpoint.kept.items()},
            "info": checkpoint.state.info,
            "extra": checkpoint.extra,
        }
        (staging / JSON_FILE).write_text(json.dumps(document, allow_nan=True))
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
    write_atomic(directory / "LATEST", target.name)
    for old in sorted(directory.glob("ckpt-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _warn(message: str) -> None:
    print(f"zofed: warning: {message}", file=sys.stderr, flush=True)  # stdout carries the summary


def load_latest_checkpoint(directory: Path, warn=_warn) -> Checkpoint | None:
    """The newest checkpoint that verifies, or None when there is none."""
    if not directory.is_dir():
        return None
    candidates = sorted(directory.glob("ckpt-*"), reverse=True)
    latest = directory / "LATEST"
    if latest.is_file():
        pointed = directory / latest.read_text().strip()
        candidates = [pointed] + [c for c in candidates if c != pointed]
    for candidate in candidates:
        try:
            return _load(candidate)
        except (OSError, ValueError, KeyError) as error:
            warn(f"checkpoint {candidate.name} is unreadable ({error}); trying the previous one")
    return None


def _load(path: Path) -> Checkpoint:
    document = json.loads((path / JSON_FILE).read_text())
    if _sha256(path / TENSORS_FILE) != document["tensors_sha256"]:
        raise ValueError("content hash mismatch")
    tensors = load_file(str(path / TENSORS_FILE))
    state = ServerState(
        weights={name: tensors[f"weights/{name}"] for name in document["weight_names"]},
        buffers={name: tensors[f"buffers/{name}"] for name in document["buffer_names"]},
        info=document["info"],
    )
    kept = {
        int(client): KeptModel(int(version), tuple(tensors[f"kept/{client}/{i}"] for i in range(count)))
        for client, (version, count) in document.get("kept", {}).items()
    }
    return Checkpoint(round=int(document["round"]), state=state, extra=document["extra"], kept=kept)


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
