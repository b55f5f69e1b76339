"""Backprop FedAvg on the same trainable tensors: the first-order baseline ("BP-based FedAvg").

Each client runs its local steps with a fresh torch.optim optimiser (SGD or AdamW) from the
global weights and uploads its weights; the server takes the mean weighted by each client's
example count (McMahan et al.'s FedAvg; `weighting: uniform` for the plain mean). With
`server_optimizer` set (FedAvgM / FedAdam / FedYogi style, see zofed.serveropt) the server
instead feeds the pseudo-gradient θ − mean to that optimiser; unset, the mean is the new model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, field_validator

from zofed.algorithms.base import (
    AlgorithmEntry,
    ClientEnv,
    ServerState,
    Sent,
    Settings,
    accept_common,
    current_weights,
    initial_state,
    sample_weighted_mean,
)
from zofed.algorithms.serverstep import optimizer_step, pseudo_gradient
from zofed.algorithms.weighting import WEIGHTING_HELP, Weighting, client_shares
from zofed.lazy import lazy_import
from zofed.messages import Message
from zofed.serveropt import ServerOptimizerSettings, build_server_optimizer

torch = lazy_import("torch")  # imported on first use: the registry reads this module without torch


class FedAvgSettings(Settings):
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0)
    weighting: Weighting = Field("examples", description=WEIGHTING_HELP)
    server_optimizer: ServerOptimizerSettings | None = Field(
        None, description="optimiser for the pseudo-gradient θ − mean; none: the mean is the new model"
    )

    @field_validator("lr", mode="before")
    @classmethod
    def _no_auto(cls, value):
        if value == "auto":  # the range test probes ZO steps; a backprop optimiser's lr is the user's
            raise ValueError("lr: auto is for the zeroth-order methods only; give fedavg.lr a number such as 1e-3")
        return value


OPTIMIZERS = {
    "sgd": lambda params, s: torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay),
    "adamw": lambda params, s: torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay),
}


class FedAvg:
    def __init__(self, settings: FedAvgSettings) -> None:
        self.settings = settings
        self.optimizer = None if settings.server_optimizer is None else build_server_optimizer(settings.server_optimizer)

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        return initial_state(weights)

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        return [Message(kind="weights", round=round, tensors=state.weights) for _ in clients]

    def train(self, message: Message, env: ClientEnv) -> Message:
        round = message.round
        optimizer = OPTIMIZERS[self.settings.optimizer](env.parameters, self.settings)
        losses, skipped = [], 0
        for batch in env.batches:
            optimizer.zero_grad(set_to_none=True)
            loss = env.loss_for_backward(batch)
            if not torch.isfinite(loss):
                skipped += 1
                continue
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        optimizer.zero_grad(set_to_none=True)
        steps = len(losses) + skipped
        metrics = {
            "train_loss": sum(losses) / len(losses) if losses else math.nan,
            "steps": float(steps),
            "skipped_steps": float(skipped),
            "forward_passes": float(steps),
            "backward_passes": float(len(losses)),
            "num_examples": float(env.num_examples),
        }
        return Message(kind="weights", round=round, tensors=current_weights(env), metrics=metrics)

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        return accept_common(sent, reply, "weights")

    def aggregate(self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]) -> ServerState:
        if not replies:
            return state
        shares = client_shares(replies, self.settings.weighting)
        mean = sample_weighted_mean([reply.tensors for _, reply in replies], shares)
        if self.optimizer is None:
            return ServerState(weights=mean)
        return optimizer_step(state, pseudo_gradient(state.weights, mean), self.optimizer)


ENTRY = AlgorithmEntry(
    name="fedavg",
    description="FedAvg with backprop (SGD/AdamW) on the same trainable tensors: the first-order baseline",
    settings=FedAvgSettings,
    build=FedAvg,
    basis="standard FedAvg with local backprop (McMahan et al.); server optimisers are options",
    differs=("the first-order baseline, not a published implementation: its optimiser and lr defaults are ours",),
)
