"""FedKSeed and FedKSeed-Pro (Qin et al., ICML 2024): ZO with K candidate seeds, K scalars up.

K candidate seeds are fixed at the start and shared (derived from the run seed, so only the
base seed and K travel). Each local step picks one candidate, uniformly (FedKSeed) or by
probabilities from the seeds' past |g| (FedKSeed-Pro), and takes a two-point ZO step along its
direction. A client uploads K scalars: the sum of g per candidate over its local steps. The
server takes their sample-weighted mean ā and moves the global model by Σ_j (−lr·ā_j)·z_j.

The paper's server rebuilds the model from the initial weights and the accumulated scalar per
seed; we keep both forms: the accumulated coefficients and the initial weights are in the state,
`rebuild_from_initial` recomputes the model from them, and `aggregate` applies the round's
coefficients incrementally (the tests pin the difference between the two to float rounding).
Our choices where the paper leaves room:
  - FedKSeed-Pro's probabilities: p_j ∝ exp(ψ_j / temperature), ψ_j the running mean of |ā_j| over
    the rounds that used seed j, normalised by its maximum (ψ_j = 0 for unused seeds).
  - Downlink: the trainable weights by default; `downlink: replay` sends each round's K
    (seed, coeff) records to clients that keep their model, as the paper's clients replay the
    scalar history (bounded by `max_lag` rounds; see algorithms/downlink.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from zofed.algorithms.base import (
    AlgorithmEntry,
    ClientEnv,
    Rejected,
    Sent,
    ServerState,
    accept_common,
    register,
    zo_metrics,
)
from zofed.algorithms.downlink import DownlinkSettings, apply_round, model_message, skip_round, wire_records
from zofed.messages import Message
from zofed.zo import DEFAULT_POOL_SIZE, Scratch, make_directions, mix_seed, replay_, zo_step

CANDIDATE_STREAM = 0xC5EED


class FedKSeedSettings(DownlinkSettings):
    lr: float = Field(1e-3, gt=0)
    mu: float = Field(1e-2, gt=0)
    num_seeds: int = Field(1024, ge=1, le=1 << 20, description="K, the candidate seeds shared by all")
    temperature: float = Field(0.5, gt=0, description="FedKSeed-Pro: softness of the seed probabilities")
    directions: Literal["gaussian", "pool"] = "gaussian"
    pool_size: int = Field(DEFAULT_POOL_SIZE, ge=1024)


def candidate_seeds(base_seed: int, count: int) -> list[int]:
    return [mix_seed(base_seed, CANDIDATE_STREAM, j) for j in range(count)]


def seed_probabilities(importance: Sequence[float], temperature: float) -> list[float]:
    values = np.asarray(importance, dtype=np.float64)
    top = values.max(initial=0.0)
    scaled = (values / top if top > 0 else values) / temperature
    weights = np.exp(scaled - scaled.max())
    return (weights / weights.sum()).tolist()


class FedKSeed:
    def __init__(self, settings: FedKSeedSettings, pro: bool) -> None:
        self.settings, self.pro = settings, pro

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        k = self.settings.num_seeds
        return ServerState(
            weights={name: tensor.detach().clone() for name, tensor in weights.items()},
            buffers={name: tensor.detach().clone() for name, tensor in weights.items()},  # initial weights
            info={"base_seed": mix_seed(seed, CANDIDATE_STREAM), "accumulated": [0.0] * k,
                  "importance": [0.0] * k, "uses": [0] * k},
        )

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        s = self.settings
        config = {"lr": s.lr, "mu": s.mu, "base_seed": state.info["base_seed"], "num_seeds": s.num_seeds,
                  "directions": s.directions, "pool_size": s.pool_size}
        probabilities = tuple(seed_probabilities(state.info["importance"], s.temperature)) if self.pro else ()
        return [model_message(state, round, client, config, s, scalars=probabilities) for client in clients]

    def train(self, message: Message, env: ClientEnv) -> Message:
        round, config, probabilities = message.round, dict(message.config), message.scalars
        k = int(config["num_seeds"])
        seeds = candidate_seeds(int(config["base_seed"]), k)
        directions = make_directions(str(config["directions"]), int(config["pool_size"]))
        scratch, rng = Scratch(), np.random.default_rng(env.seed)
        # float32 on the wire: renormalise so the probabilities sum to 1 in float64
        p = np.asarray(probabilities, dtype=np.float64) / sum(probabilities) if probabilities else None
        accumulated, losses, skipped = [0.0] * k, [], 0
        for batch in env.batches:
            j = int(rng.choice(k, p=p) if p is not None else rng.integers(k))
            result = zo_step(env.tensors, partial(env.loss, batch), seeds[j], float(config["mu"]),
                             float(config["lr"]), directions, scratch)
            if result.skipped:
                skipped += 1
                continue
            accumulated[j] += result.projected_grad
            losses.append(result.loss)
        return Message(kind="seeds", round=round, scalars=tuple(accumulated), metrics=zo_metrics(env, losses, skipped))

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        reply = accept_common(sent, reply, "seeds")
        k = self.settings.num_seeds
        if reply.seeds or len(reply.scalars) != k:
            raise Rejected(f"{len(reply.scalars)} scalars (and {len(reply.seeds)} seeds) where {k} candidates' sums were asked")
        used = sum(1 for g in reply.scalars if g != 0.0)  # each local step adds to one candidate's sum
        if sent.steps is not None and used > sent.steps:
            raise Rejected(f"{used} candidates moved in {sent.steps} local steps")
        return reply

    def aggregate(self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]) -> ServerState:
        k, lr = self.settings.num_seeds, self.settings.lr
        replies = [(c, r) for c, r in replies if len(r.scalars) == k]  # a malformed reply is never applied
        if not replies:
            return skip_round(state, round, self.settings)
        sizes = np.asarray([float(r.metrics["num_examples"]) for _, r in replies])
        mean = (np.asarray([r.scalars for _, r in replies], dtype=np.float64) * (sizes / sizes.sum())[:, None]).sum(0)
        coefficients = np.asarray([-lr * float(g) for g in mean], dtype=np.float32).tolist()  # as the wire rounds
        records = wire_records(candidate_seeds(int(state.info["base_seed"]), k), coefficients)
        info = dict(state.info)
        info["accumulated"] = [a + c for a, c in zip(state.info["accumulated"], coefficients)]
        uses = list(state.info["uses"])
        importance = list(state.info["importance"])
        for j, g in enumerate(mean):
            if g != 0.0:  # running mean of |ā_j| over the rounds that used seed j
                uses[j] += 1
                importance[j] += (abs(float(g)) - importance[j]) / uses[j]
        info["uses"], info["importance"] = uses, importance
        return apply_round(state, round, records, [c for c, _ in replies], self.settings, self._directions(), info)

    def rebuild_from_initial(self, state: ServerState) -> dict[str, torch.Tensor]:
        """The global model as the paper's server computes it: initial weights + Σ_j accumulated_j·z_j."""
        weights = [tensor.clone() for tensor in state.buffers.values()]
        seeds = candidate_seeds(int(state.info["base_seed"]), self.settings.num_seeds)
        replay_(weights, list(zip(seeds, state.info["accumulated"])), self._directions(), Scratch())
        return dict(zip(state.buffers, weights))

    def _directions(self):
        return make_directions(self.settings.directions, self.settings.pool_size)


register(AlgorithmEntry(
    name="fedkseed",
    description="FedKSeed: K shared candidate seeds, K scalars up (Qin et al., ICML 2024)",
    settings=FedKSeedSettings,
    build=partial(FedKSeed, pro=False),
))
register(AlgorithmEntry(
    name="fedkseed-pro",
    description="FedKSeed-Pro: candidate seeds sampled by their past |g| (Qin et al., ICML 2024)",
    settings=FedKSeedSettings,
    build=partial(FedKSeed, pro=True),
))
