"""The client side of the model downlink, shared by every runtime.

Before an algorithm's client step runs, the client's trainable tensors must hold the model the
server sent: a `weights` message's tensors, or the client's kept copy moved by a `replay`
message's records. A client told to keep its model (`keep_model`, or any replay message) keeps
the synced model, not its locally trained one, because the next replay starts from the global
version it synced to.

A client holds one model in memory, not two: `receive_model_` loads its kept copy straight into
the model's tensors, and saves the synced tensors back to its storage before training starts
(runtime/tensor_file.py streams them one tensor at a time). Where the copy lives is the
runtime's `KeptCopy`: files for the in-process runtime's `KeptStore` (one folder per client, so
its memory does not grow with the number of clients) and a SuperNode with a `state-dir`
(`KeptFile`); bytes in a node's state otherwise (runtime/flower/records.py).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch

from zofed.algorithms.base import client_directions
from zofed.algorithms.downlink import method_scalars, replay_segments
from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.runtime import tensor_file
from zofed.zo import Scratch, replay_


class KeptCopy(Protocol):
    """One client's kept model in its own storage: the synced model of `version` (None: it keeps none)."""

    @property
    def version(self) -> int | None: ...

    def load_into(self, tensors: Sequence[torch.Tensor]) -> None: ...

    def save_from(self, version: int, tensors: Sequence[torch.Tensor]) -> None: ...

    def forget(self) -> None: ...


class KeptFile:
    """A kept model in one safetensors file (tensors by view index, the version in its metadata)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def version(self) -> int | None:
        return _version(tensor_file.read_metadata(self.path), self.path) if self.path.is_file() else None

    def load_into(self, tensors: Sequence[torch.Tensor]) -> None:
        tensor_file.load_into(self.path, tensors)

    def save_from(self, version: int, tensors: Sequence[torch.Tensor]) -> None:
        tensor_file.save_tensors(self.path, tensors, {"version": str(version)})

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


class KeptInMemory:
    """A kept model as the same file's bytes in memory: a node's state, tests, and benchmarks."""

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data

    @property
    def version(self) -> int | None:
        if self.data is None:
            return None
        return _version(tensor_file.metadata_of(io.BytesIO(self.data), len(self.data), "the kept model"), "the kept model")

    def load_into(self, tensors: Sequence[torch.Tensor]) -> None:
        tensor_file.read_into(io.BytesIO(self.data), tensors, len(self.data), "the kept model")

    def save_from(self, version: int, tensors: Sequence[torch.Tensor]) -> None:
        buffer = io.BytesIO()
        tensor_file.write_tensors(buffer, tensors, {"version": str(version)})
        self.data = buffer.getvalue()

    def forget(self) -> None:
        self.data = None


def _version(metadata: dict[str, str], source) -> int:
    version = metadata.get("version", "")
    if not version.isdigit():
        raise tensor_file.TensorFileError(f"{source} has no model version; delete it: the server then sends the weights")
    return int(version)


class KeptStore:
    """The simulated clients' kept models, on disk: `<directory>/<client>/v<version>.safetensors`.

    Stands in for each client's own storage. Nothing is held in memory and a round touches only
    its sampled clients' files, so the in-process runtime's memory and per-round work do not grow
    with the number of clients, and checkpoints need not carry the copies.

    Each client keeps its newest `VERSIONS` models. A resumed run redoes at most the rounds after
    its checkpoint (two, when the newest checkpoint is corrupt and the one before is used), and a
    redone round starts from version round − 1; `client(client, at_most=round − 1)` sees the newest
    version not past it. A version newer than the server's record of the client is harmless: the
    client skips the replayed rounds it already holds, and the global model of each version is the
    same in every session, so the redone round is bit-identical.
    """

    VERSIONS = 3

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def client(self, client: int, at_most: int) -> KeptVersions:
        return KeptVersions(self.directory / str(client), at_most, self.VERSIONS)


class KeptVersions:
    """One client's folder of a `KeptStore`: its newest versions, the newest not past `at_most` in use."""

    def __init__(self, folder: Path, at_most: int, versions: int) -> None:
        self.folder, self.at_most, self.versions = folder, at_most, versions

    def _versions(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(path.stem[1:]) for path in self.folder.glob("v*.safetensors"))

    def _path(self, version: int) -> Path:
        return self.folder / f"v{version:06d}.safetensors"

    @property
    def version(self) -> int | None:
        usable = [version for version in self._versions() if version <= self.at_most]
        return usable[-1] if usable else None

    def load_into(self, tensors: Sequence[torch.Tensor]) -> None:
        if self.version is None:
            raise ZofedError(f"{self.folder} holds no kept model up to version {self.at_most}")
        tensor_file.load_into(self._path(self.version), tensors)

    def save_from(self, version: int, tensors: Sequence[torch.Tensor]) -> None:
        """Keep `tensors` as the client's newest version."""
        tensor_file.save_tensors(self._path(version), tensors, {"version": str(version)})
        for old in [held for held in self._versions() if held > version]:
            self._path(old).unlink()  # a redone round's sync supersedes what the lost session kept
        for old in self._versions()[: -self.versions]:
            self._path(old).unlink()

    def forget(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@torch.no_grad()
def receive_model_(message: Message, tensors: Sequence[torch.Tensor], names: Sequence[str],
                   kept: KeptCopy | None) -> Message:
    """Bring `tensors` to the round's start model and keep it as `kept` says; returns the message left for the algorithm.

    `kept`: the client's kept copy (None: a client that keeps nothing). A model to keep is saved
    from `tensors` here, before training moves them. The returned message carries no model
    payload (its tensors and record seeds are dropped, so a client holds one model, not two); a
    replay message's trailing scalars stay as the method's own.
    """
    version = message.round - 1
    if message.kind == "replay":
        held = None if kept is None else kept.version
        if held is None:
            raise ZofedError(
                f"round {message.round}: a replay downlink reached a client that holds no model; "
                "the server must send it weights (clear its version, e.g. restart the run without --resume)"
            )
        base_version = int(message.config["replay"]["base_version"])
        if held < base_version or held > version:
            raise ZofedError(
                f"round {message.round}: the client holds model version {held} but the replay "
                f"starts after version {base_version}; the server must send it weights"
            )
        kept.load_into(tensors)
        directions = client_directions(message.config, tensors[0].device)
        scratch = Scratch()
        for round, records, blocks in replay_segments(message):
            if round > held:  # rounds it already holds were sent again because its reply never came
                replay_(tensors, records, directions, scratch, blocks)
    elif message.kind == "weights" and message.tensors:
        for name, tensor in zip(names, tensors):
            tensor.copy_(message.tensors[name])
    else:
        return message
    if kept is not None:
        if message.kind == "replay" or bool(message.config.get("keep_model", False)):
            kept.save_from(version, tensors)
        else:
            kept.forget()
    return replace(message, tensors={}, seeds=(), scalars=method_scalars(message))
