"""FedZO (Fang, Yu, Jiang, Shi, Jones, Zhou, IEEE TSP 2022; arXiv 2201.09531): FedAvg over ZO local steps.

Each sampled client starts from the global trainable weights and runs one ZO step per local
batch: it takes `directions_per_step` (the paper's b2) estimates g_j along z_j at the same θ and
applies their average at once, θ -= lr/b · Σ_j g_j·z_j. It uploads its model delta
Δ_i = θ_i − θ (message kind `delta`), and the server does FedAvg with partial participation:
θ ← θ + Σ_i w_i·Δ_i over the round's sampled clients that replied, w_i = 1/|replies| as in the
paper (`weighting: uniform`, the default; `examples` weights by the server's count of each
client's examples).

What follows the paper: b2 directions averaged per local step, the one-sided estimator
g_j = (L(θ+μz_j) − L(θ))/μ (`estimator: forward`, the default here; L(θ) is computed once per
step and shared by the b directions, so a step costs b + 1 forwards), the delta upload and the
uniform average over sampled clients. The paper's minibatch (b1) is the runtime's batch size.

Ours, labelled as such:
  directions   the paper draws v_j uniformly on the unit sphere and scales the estimate by d;
               we use the kit's Gaussian or pool directions z (E[zzᵀ] = I, the same expectation,
               no d factor). `estimator: central` is an option (2b forwards a step).
  defaults     `directions_per_step` = 4, lr and μ are the ZO settings base's (the paper tunes
               them per task; configs set them for the model).
  upload: seeds  one (seed, g) record per direction per local step instead of the delta; the
               server rebuilds each client's delta by replaying −lr/b·g along z(seed) (the same
               delta up to float rounding, tested) and averages as above.
The downlink is always the weights, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from zofed.algorithms.base import (
    AlgorithmEntry,
    ClientEnv,
    Sent,
    ServerState,
    accept_common,
    initial_state,
    sample_weighted_mean,
    step_records,
    zo_metrics,
)
from zofed.algorithms.settings import ZOSettings, ZOClientConfig
from zofed.algorithms.weighting import WEIGHTING_HELP, Weighting, client_shares
from zofed.messages import Message
from zofed.zo import ESTIMATOR_HELP, Estimator, Scratch, mix_seed, perturb_, replay_, two_point, zo_step

if TYPE_CHECKING:  # annotations only: importing this module (the registry does) does not import torch
    import torch

Upload = Literal["delta", "seeds"]


class FedZOSettings(ZOSettings):
    directions_per_step: int = Field(4, ge=1, le=64, description="b2: directions averaged in one local step (ours: 4)")
    estimator: Estimator = Field("forward", description=f"{ESTIMATOR_HELP} (paper: forward)")
    weighting: Weighting = Field("uniform", description=f"{WEIGHTING_HELP} (paper: uniform)")
    upload: Upload = Field("delta", description="delta: the model delta (paper); seeds: (seed, g) records (ours)")

    @property
    def scalars_per_step(self) -> int:
        return self.directions_per_step

    @property
    def shared_coordinates(self) -> bool:
        """Deltas share the model's coordinates; seed records are each client's own."""
        return self.upload == "delta"

    @property
    def replays_directions(self) -> bool:
        """With a seeds upload the server rebuilds every client's directions."""
        return self.upload == "seeds"


def direction_seed(client_seed: int, step: int, direction: int) -> int:
    """The seed of direction j of local step t: the client and the server derive it alike."""
    return mix_seed(client_seed, step, direction)


class FedZO:
    def __init__(self, settings: FedZOSettings) -> None:
        self.settings = settings

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        return initial_state(weights)

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        s = self.settings
        config = {**s.client_config(state), "directions_per_step": s.directions_per_step, "upload": s.upload}
        return [Message(kind="weights", round=round, config=config, tensors=state.weights) for _ in clients]

    def train(self, message: Message, env: ClientEnv) -> Message:
        round, config = message.round, message.config
        zo = ZOClientConfig.of(config, env.tensors[0].device)
        count = int(config["directions_per_step"])
        start = [tensor.clone() for tensor in env.tensors] if config["upload"] == "delta" else None
        scratch = Scratch()
        seeds, grads, losses, skipped = [], [], [], 0
        for step, batch in enumerate(env.batches):
            loss_at = partial(env.loss, batch)
            step_seeds = [direction_seed(env.seed, step, j) for j in range(count)]
            if count == 1:  # one direction: the step that restores and updates in its last pass
                result = zo_step(env.tensors, loss_at, step_seeds[0], zo.mu, zo.lr, zo.directions, scratch,
                                 zo.step_loss, estimator=zo.estimator)
                estimates = [(result.projected_grad, result.loss)]
            else:
                base_loss = loss_at() if zo.estimator == "forward" else None  # L(θ) once, shared by the b directions
                estimates = [two_point(env.tensors, loss_at, seed, zo.mu, zo.directions, scratch, zo.step_loss,
                                       estimator=zo.estimator, base_loss=base_loss) for seed in step_seeds]
            seeds.extend(step_seeds)
            if any(not math.isfinite(g) for g, _ in estimates):
                skipped += 1  # θ is restored; every direction's record says g = 0, which moves nothing
                grads.extend([0.0] * count)
                continue
            if count > 1:  # the average of the b estimates, all taken at the same θ, applied together
                for seed, (g, _) in zip(step_seeds, estimates):
                    perturb_(env.tensors, seed, -zo.lr / count * g, zo.directions, scratch, rounding="stochastic")
            grads.extend(g for g, _ in estimates)
            losses.append(sum(loss for _, loss in estimates) / count)
        metrics = zo_metrics(env, losses, skipped, directions_per_step=count, estimator=zo.estimator)
        if start is None:
            return Message(kind="seeds", round=round, seeds=tuple(seeds), scalars=tuple(grads), metrics=metrics)
        delta = {name: (tensor - before).detach() for name, tensor, before in zip(env.names, env.tensors, start)}
        return Message(kind="delta", round=round, tensors=delta, metrics=metrics)

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        reply = accept_common(sent, reply, self.settings.upload)
        if reply.kind == "seeds":
            count = int(sent.message.config["directions_per_step"])
            steps = sent.steps if sent.steps is not None else len(reply.seeds) // count
            expected = [[direction_seed(sent.seed, step, j) for j in range(count)] for step in range(steps)]
            step_records(reply.seeds, reply.scalars, expected, sent)
        return reply

    def aggregate(self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]) -> ServerState:
        if not replies:
            return state
        shares = client_shares(replies, self.settings.weighting)
        if self.settings.upload == "delta":
            mean = sample_weighted_mean([reply.tensors for _, reply in replies], shares)
            weights = {name: (tensor.float() + mean[name].float()).to(tensor.dtype)
                       for name, tensor in state.weights.items()}
            return ServerState(weights=weights, buffers=state.buffers, info=state.info)
        # θ + Σ_i w_i·Δ_i with Δ_i = Σ_t Σ_j (−lr/b·g_itj)·z_itj: every client's records, scaled by its share
        step = -self.settings.lr / self.settings.directions_per_step
        records = [(seed, share * step * g) for (_, reply), share in zip(replies, shares)
                   for seed, g in zip(reply.seeds, reply.scalars)]
        moved = [tensor.clone() for tensor in state.weights.values()]
        replay_(moved, records, self.settings.sampler, Scratch())
        return ServerState(weights=dict(zip(state.weights, moved)), buffers=state.buffers, info=state.info)


ENTRY = AlgorithmEntry(
    name="fedzo",
    description="FedZO: b directions averaged per ZO local step, delta upload, FedAvg (Fang et al., IEEE TSP 2022)",
    settings=FedZOSettings,
    build=FedZO,
    basis="paper (b2 directions per step, one-sided estimator, delta upload, uniform average over sampled clients)",
    differs=(
        "no official code is public; from the paper: Gaussian/pool directions instead of the unit sphere scaled by d",
        "directions_per_step 4, lr 1e-3 and μ 1e-2 are ours (the paper tunes them per task)",
        "`upload: seeds`, `estimator: central` and `weighting: examples` are options",
    ),
)
