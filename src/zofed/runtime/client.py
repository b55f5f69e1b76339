"""The client side of the model downlink, shared by every runtime.

Before an algorithm's client step runs, the client's trainable tensors must hold the model the
server sent: a `weights` message's tensors, or the client's kept copy moved by a `replay`
message's records. A client told to keep its model (`keep_model`, or any replay message) keeps
the synced model, not its locally trained one, because the next replay starts from the global
version it synced to. Where a runtime keeps those copies is its business: in memory for the
in-process runtime's `KeptStore` (files, one per client and version, so its memory does not grow
with the number of clients), in a node's state or on its disk for a deployment.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save

from zofed.algorithms.downlink import method_scalars, replay_segments
from zofed.atomic import write_atomic
from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.runtime.codec import tensor_views
from zofed.zo import Scratch, make_directions
from zofed.zo.blocks import replay_blocks_


@dataclass(frozen=True)
class KeptModel:
    version: int
    tensors: tuple[torch.Tensor, ...]


class KeptStore:
    """The simulated clients' kept models, on disk: `<directory>/<client>/v<version>.safetensors`.

    Stands in for each client's own storage. Nothing is held in memory and a round touches only
    its sampled clients' files, so the in-process runtime's memory and per-round work do not grow
    with the number of clients, and checkpoints need not carry the copies.

    Each client keeps its newest `VERSIONS` models. A resumed run redoes at most the rounds after
    its checkpoint (two, when the newest checkpoint is corrupt and the one before is used), and a
    redone round starts from version round − 1; `load(client, at_most=round − 1)` returns the newest
    version not past it. A version newer than the server's record of the client is harmless: the
    client skips the replayed rounds it already holds, and the global model of each version is the
    same in every session, so the redone round is bit-identical.
    """

    VERSIONS = 3

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _versions(self, client: int) -> list[int]:
        folder = self.directory / str(client)
        if not folder.is_dir():
            return []
        return sorted(int(path.stem[1:]) for path in folder.glob("v*.safetensors"))

    def _path(self, client: int, version: int) -> Path:
        return self.directory / str(client) / f"v{version:06d}.safetensors"

    def load(self, client: int, at_most: int) -> KeptModel | None:
        usable = [version for version in self._versions(client) if version <= at_most]
        return kept_from_bytes(self._path(client, usable[-1]).read_bytes()) if usable else None

    def save(self, client: int, kept: KeptModel | None) -> None:
        """Keep `kept` as the client's newest version; None: the client keeps nothing."""
        if kept is None:
            shutil.rmtree(self.directory / str(client), ignore_errors=True)
            return
        write_kept(self._path(client, kept.version), kept)
        for old in [version for version in self._versions(client) if version > kept.version]:
            self._path(client, old).unlink()  # a redone round's sync supersedes what the lost session kept
        for old in self._versions(client)[: -self.VERSIONS]:
            self._path(client, old).unlink()


def kept_to_bytes(kept: KeptModel) -> bytes:
    """A kept model as safetensors bytes: tensors by view index, the version in the metadata."""
    tensors = {str(i): tensor.detach().contiguous() for i, tensor in enumerate(kept.tensors)}
    return safetensors_save(tensors, metadata={"version": str(kept.version)})


def kept_from_bytes(data: bytes) -> KeptModel:
    tensors, metadata = tensor_views(data, 0, len(data))  # read-only: they are only copied into the model
    return KeptModel(int(metadata["version"]), tuple(tensors[str(i)] for i in range(len(tensors))))


def write_kept(path: Path, kept: KeptModel) -> None:
    """Tensors and version in one file, replaced atomically (a kill leaves the old file or the new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, kept_to_bytes(kept))


@torch.no_grad()
def receive_model_(
    message: Message, tensors: Sequence[torch.Tensor], names: Sequence[str], kept: KeptModel | None
) -> tuple[Message, KeptModel | None]:
    """Bring `tensors` to the round's start model; returns the message left for the algorithm and what to keep.

    The returned message carries no model payload (its tensors and record seeds are dropped, so a
    client holds one model, not two); a replay message's trailing scalars stay as the method's own.
    """
    version = message.round - 1
    if message.kind == "replay":
        if kept is None:
            raise ZofedError(
                f"round {message.round}: a replay downlink reached a client that holds no model; "
                "the server must send it weights (clear its version, e.g. restart the run without --resume)"
            )
        base_version = int(message.config["replay"]["base_version"])
        if kept.version < base_version or kept.version > version:
            raise ZofedError(
                f"round {message.round}: the client holds model version {kept.version} but the replay "
                f"starts after version {base_version}; the server must send it weights"
            )
        for tensor, held in zip(tensors, kept.tensors):
            tensor.copy_(held)
        directions = make_directions(str(message.config["directions"]), int(message.config["pool_size"]))
        scratch = Scratch()
        for round, records, blocks in replay_segments(message):
            if round > kept.version:  # rounds it already holds were sent again because its reply never came
                replay_blocks_(tensors, records, blocks, directions, scratch)
    elif message.kind == "weights" and message.tensors:
        for name, tensor in zip(names, tensors):
            tensor.copy_(message.tensors[name])
    else:
        return message, kept
    keep = message.kind == "replay" or bool(message.config.get("keep_model", False))
    new_kept = KeptModel(version, tuple(tensor.detach().clone() for tensor in tensors)) if keep else None
    return replace(message, tensors={}, seeds=(), scalars=method_scalars(message)), new_kept
