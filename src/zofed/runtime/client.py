"""The client side of the model downlink, shared by every runtime.

Before an algorithm's client step runs, the client's trainable tensors must hold the model the
server sent: a `weights` message's tensors, or the client's kept copy moved by a `replay`
message's records. A client told to keep its model (`keep_model`, or any replay message) keeps
the synced model, not its locally trained one, because the next replay starts from the global
version it synced to. Where a runtime keeps those copies is its business: in memory for the
in-process runtime (and in its checkpoints), on node-local disk for a deployment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from zofed.algorithms.downlink import method_scalars, replay_segments
from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.zo import Scratch, make_directions, replay_


@dataclass(frozen=True)
class KeptModel:
    version: int
    tensors: tuple[torch.Tensor, ...]


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
        for round, records in replay_segments(message):
            if round > kept.version:  # rounds it already holds were sent again because its reply never came
                replay_(tensors, records, directions, scratch)
    elif message.kind == "weights" and message.tensors:
        for name, tensor in zip(names, tensors):
            tensor.copy_(message.tensors[name])
    else:
        return message, kept
    keep = message.kind == "replay" or bool(message.config.get("keep_model", False))
    new_kept = KeptModel(version, tuple(tensor.detach().clone() for tensor in tensors)) if keep else None
    return replace(message, tensors={}, seeds=(), scalars=method_scalars(message)), new_kept
