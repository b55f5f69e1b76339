"""The contract every federated method implements, and the registry that holds them.

A method is a small object with no hidden state: the server's state goes in and comes out of
each call explicitly, and a client's work is a pure function of the message it received and
the environment the runtime hands it (its data, the shared model's trainable tensors and a
loss closure). Nothing here imports transformers, flwr or the config.
"""

from __future__ import annotations

import math

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from zofed.messages import JsonValue, Message

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ServerState:
    """Everything the server carries between rounds; checkpointed as tensors + JSON.

    `weights` are the global trainable tensors in view order. `buffers` hold any other tensors a
    method keeps (momentum, initial weights). `info` is JSON-serialisable bookkeeping.
    """

    weights: Mapping[str, torch.Tensor]
    buffers: Mapping[str, torch.Tensor] = field(default_factory=dict)
    info: Mapping[str, JsonValue] = field(default_factory=dict)


class SplitForward(Protocol):
    """The model run in two parts at layer s (block 1: embeddings + layers < s; block 2: the rest).

    `prefix` runs block 1 once and returns an opaque cache; `suffix_loss` runs only block 2 from
    it, giving the loss a full forward would give as long as only block 2's tensors changed.
    `tensor_layers[i]` places trainable tensor i (view order) in the forward: its layer, −1 before
    the layers (embeddings, a tied head), `num_layers` after them (final norm, an untied head).
    """

    @property
    def num_layers(self) -> int: ...

    @property
    def tensor_layers(self) -> tuple[int, ...]: ...

    def prefix(self, batch: Batch, split: int) -> Any: ...

    def suffix_loss(self, cache: Any) -> float: ...


@dataclass(frozen=True)
class ClientEnv:
    """What a client works with, handed in by the runtime for one round.

    `tensors` are the live trainable tensors of the client's model (perturbing them changes the
    model), already holding the round's start model: the runtime applied the downlink (weights or
    replay) before calling `train`. `parameters` are the same tensors as autograd leaves for
    backprop baselines. `split` is the model's split forward where the model has one.
    """

    client_id: int
    seed: int  # this client's seed for this round; every local step derives its own from it
    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]
    parameters: tuple[torch.nn.Parameter, ...]
    batches: Iterator[Batch]
    loss: Callable[[Batch], float]  # forward only, eval mode, inference mode
    loss_for_backward: Callable[[Batch], torch.Tensor]  # train mode, graph kept
    num_examples: int
    split: SplitForward | None = None


class Settings(BaseModel):
    """Base for each method's settings: strict, so a misspelt key is an error, not a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Algorithm(Protocol):
    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        """Server state before round 1 from the initial trainable weights."""
        ...

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        """One message per sampled client (same order), server -> client."""
        ...

    def train(self, message: Message, env: ClientEnv) -> Message:
        """Client work for one round; the reply travels client -> server."""
        ...

    def aggregate(
        self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]
    ) -> ServerState:
        """New server state from (client id, reply) pairs of the clients that answered."""
        ...


@dataclass(frozen=True)
class AlgorithmEntry:
    name: str
    description: str
    settings: type[Settings]
    build: Callable[[Any], Algorithm]
    basis: str = ""  # what follows the paper / official code and what is our design (shown by `zofed list`)


ALGORITHMS: dict[str, AlgorithmEntry] = {}


def register(entry: AlgorithmEntry) -> AlgorithmEntry:
    if entry.name in ALGORITHMS:
        raise ValueError(f"algorithm '{entry.name}' is already registered")
    ALGORITHMS[entry.name] = entry
    return entry


def get_algorithm(name: str) -> AlgorithmEntry:
    try:
        return ALGORITHMS[name]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        from zofed.errors import ZofedError

        raise ZofedError(f"unknown algorithm '{name}'; use one of: {known}") from None


def build_algorithm(name: str, settings: Mapping[str, Any] | Settings | None = None) -> Algorithm:
    entry = get_algorithm(name)
    if not isinstance(settings, Settings):
        settings = entry.settings(**dict(settings or {}))
    return entry.build(settings)


def sample_weighted_mean(
    tensor_sets: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Σ w_k·T_k / Σ w_k per name, accumulated in float32 whatever the tensors' dtype."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("sample-weighted mean needs a positive total weight")
    names = list(tensor_sets[0])
    mean = {name: torch.zeros_like(tensor_sets[0][name], dtype=torch.float32) for name in names}
    for tensors, weight in zip(tensor_sets, weights):
        for name in names:
            mean[name].add_(tensors[name].float(), alpha=weight / total)
    return {name: mean[name].to(tensor_sets[0][name].dtype) for name in names}


def current_weights(env: ClientEnv) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in zip(env.names, env.tensors)}


def zo_metrics(env: ClientEnv, losses: Sequence[float], skipped: int, directions_per_step: int = 1) -> dict[str, float]:
    """A ZO client's round: every local step (skipped ones too) costs two forwards per direction."""
    steps = len(losses) + skipped
    return {
        "train_loss": sum(losses) / len(losses) if losses else math.nan,
        "steps": float(steps),
        "skipped_steps": float(skipped),
        "forward_passes": float(2 * directions_per_step * steps),
        "num_examples": float(env.num_examples),
    }
