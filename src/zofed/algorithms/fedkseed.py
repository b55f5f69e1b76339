"""FedKSeed and FedKSeed-Pro (Qin et al., ICML 2024): ZO with K candidate seeds, K scalars up.

K candidate seeds are fixed at the start and shared (derived from the run seed, so only the
base seed and K travel; the paper's K = 4096 is the default). The defaults lr 3e-7 and μ 5e-4 are
the official code's (its README's run scripts and main.py's zo_eps), for a full-parameter 1B model;
the official code tunes every weight, zofed whatever the config's `trainable` says (`zofed list`
and docs/methods.md list every difference). Each local step picks one
candidate, uniformly (FedKSeed) or by probabilities from the seeds' past |g| (FedKSeed-Pro), and
takes a two-point ZO step along its direction. A client uploads K scalars: the sum of g per
candidate over its local steps. The server takes their mean ā weighted by each client's example
count (`weighting: examples`, as the official server weighs by data size) and moves the global
model by Σ_j (−lr·ā_j)·z_j.

FedKSeed-Pro's probabilities follow the official code (alibaba/FederatedScope, branch FedKSeed:
server.py `calculate_probabilities`, optimizers/mezo_bias_optimizer.py): every seed's history of
g starts with one 0 and gets the g of every individual local step that used it, on any client;
ψ_j = mean over that history of |clip(g, ±clip)| (clip = 1000, the official bias_loss_clip);
ψ is min-max normalised, (ψ − min ψ)/(max ψ − min ψ + 1e-10), and p = softmax(ψ) at temperature 1.
So a Pro client also uploads, in its reply's config, for each candidate it used (`used`, candidate
indices) the sum of |clip(g)| over its steps on it (`abs_sums`) and its number of such steps
(`steps`); the server keeps Σ|clip(g)| and the step count per candidate, and
ψ_j = Σ|clip(g)|_j / (steps_j + 1), the +1 being the history's initial 0.

The paper's server rebuilds the model from the initial weights and the accumulated scalar per
seed; we keep both forms: the accumulated coefficients and the initial weights are in the state,
`rebuild_from_initial` recomputes the model from them, and `aggregate` applies the round's
coefficients incrementally (the tests pin the difference between the two to float rounding).
Our choices where the paper leaves room:
  - Downlink: the trainable weights by default; `downlink: replay` sends each round's K
    (seed, coeff) records to clients that keep their model, as the paper's clients replay the
    scalar history (bounded by `max_lag` rounds; see algorithms/downlink.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from zofed.algorithms.base import (
    AlgorithmEntry,
    ClientEnv,
    Rejected,
    Sent,
    ServerState,
    accept_common,
    initial_state,
    zo_metrics,
)
from zofed.algorithms.downlink import DownlinkSettings, apply_round, model_message, skip_round, wire_records
from zofed.algorithms.settings import OWN_DIRECTIONS, LearningRate, PositiveFloat, ZOClientConfig
from zofed.algorithms.weighting import client_shares
from zofed.messages import Message
from zofed.zo import Scratch, mix_seed, replay_, zo_step

if TYPE_CHECKING:  # annotations only: importing this module (the registry does) does not import torch
    import torch

CANDIDATE_STREAM = 0xC5EED


class FedKSeedSettings(DownlinkSettings):
    # The official code's values (alibaba/FederatedScope, branch FedKSeed): main.py's argparse default zo_eps 5e-4,
    # and the lr its README's run scripts pass (--lr 0.0000003; main.py's own default, 1e-3, is not what it ran).
    lr: LearningRate = Field(3e-7, description="η, the learning rate (official scripts: 3e-7), or auto")
    mu: PositiveFloat = Field(5e-4, description="μ, the perturbation scale (official zo_eps: 5e-4)")
    num_seeds: int = Field(4096, ge=1, le=1 << 20, description="K, the candidate seeds shared by all (paper: 4096)")
    clip: float = Field(1000.0, gt=0, description="FedKSeed-Pro: |g| clipped at this in the seed importance (official)")

    @property
    def replays_directions(self) -> bool:
        """The server rebuilds the model from the candidates' seeds."""
        return True


def candidate_seeds(base_seed: int, count: int) -> list[int]:
    return [mix_seed(base_seed, CANDIDATE_STREAM, j) for j in range(count)]


def seed_probabilities(abs_sums: Sequence[float], steps: Sequence[int]) -> list[float]:
    """softmax(min-max(ψ)), ψ_j = Σ|clip(g)|_j / (steps_j + 1): the official FedKSeed-Pro rule."""
    importance = np.asarray(abs_sums, dtype=np.float64) / (np.asarray(steps, dtype=np.float64) + 1.0)
    low = importance.min()
    normalised = (importance - low) / (importance.max() + 1e-10 - low)
    weights = np.exp(normalised - normalised.max())
    return (weights / weights.sum()).tolist()


def seed_statistics(reply: Message, k: int, clip: float) -> list[tuple[int, float, int]]:
    """(candidate, Σ|clip(g)|, steps) from a Pro reply's config; none when they cannot be a client's.

    A sum outside [0, clip·steps] cannot come from clipped steps: `accept` rejects a reply whose
    moved candidates come without statistics it can count, so no reply can push a seed's
    probability past what its steps allow.
    """
    used, sums, steps = (reply.config.get(key) for key in ("used", "abs_sums", "steps"))
    if not (isinstance(used, list) and isinstance(sums, list) and isinstance(steps, list)):
        return []
    if not len(used) == len(sums) == len(steps) or not all(isinstance(j, int) and 0 <= j < k for j in used):
        return []
    if not all(isinstance(n, int) and n >= 0 and isinstance(a, (int, float)) and 0.0 <= a <= clip * n * (1 + 1e-6)
               for a, n in zip(sums, steps)):
        return []
    return [(int(j), float(a), int(n)) for j, a, n in zip(used, sums, steps)]


class FedKSeed:
    def __init__(self, settings: FedKSeedSettings, pro: bool) -> None:
        self.settings, self.pro = settings, pro

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        k = self.settings.num_seeds
        info = {"base_seed": mix_seed(seed, CANDIDATE_STREAM), "accumulated": [0.0] * k, "abs_sums": [0.0] * k,
                "steps": [0] * k}
        return initial_state(weights, info, keep_initial=True)

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        s = self.settings
        config = {**s.client_config(state), "base_seed": state.info["base_seed"], "num_seeds": s.num_seeds,
                  "clip": s.clip}
        probabilities = tuple(seed_probabilities(state.info["abs_sums"], state.info["steps"])) if self.pro else ()
        return [model_message(state, round, client, config, s, scalars=probabilities) for client in clients]

    def train(self, message: Message, env: ClientEnv) -> Message:
        round, config, probabilities = message.round, message.config, message.scalars
        zo = ZOClientConfig.of(config, env.tensors[0].device)
        k = int(config["num_seeds"])
        seeds = candidate_seeds(int(config["base_seed"]), k)
        scratch, rng = Scratch(), np.random.default_rng(env.seed)
        # float32 on the wire: renormalise so the probabilities sum to 1 in float64
        p = np.asarray(probabilities, dtype=np.float64) / sum(probabilities) if probabilities else None
        clip = float(config["clip"])
        accumulated, abs_sums, steps, losses, skipped = [0.0] * k, {}, {}, [], 0
        for batch in env.batches:
            j = int(rng.choice(k, p=p) if p is not None else rng.integers(k))
            result = zo_step(env.tensors, partial(env.loss, batch), seeds[j], zo.mu, zo.lr, zo.directions, scratch,
                             zo.step_loss, estimator=zo.estimator)
            if result.skipped:
                skipped += 1
                continue
            accumulated[j] += result.projected_grad
            abs_sums[j] = abs_sums.get(j, 0.0) + min(abs(result.projected_grad), clip)
            steps[j] = steps.get(j, 0) + 1
            losses.append(result.loss)
        used = sorted(steps)
        statistics = {"used": used, "abs_sums": [abs_sums[j] for j in used], "steps": [steps[j] for j in used]}
        return Message(kind="seeds", round=round, config=statistics if p is not None else {},
                       scalars=tuple(accumulated), metrics=zo_metrics(env, losses, skipped, estimator=zo.estimator))

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        reply = accept_common(sent, reply, "seeds")
        k = self.settings.num_seeds
        if reply.seeds or len(reply.scalars) != k:
            raise Rejected(f"{len(reply.scalars)} scalars (and {len(reply.seeds)} seeds) where {k} candidates' sums were asked")
        used = sum(1 for g in reply.scalars if g != 0.0)  # each local step adds to one candidate's sum
        if sent.steps is not None and used > sent.steps:
            raise Rejected(f"{used} candidates moved in {sent.steps} local steps")
        if self.pro:
            # the statistics steer every later round's seed sampling: they must be ones this client's steps made
            statistics = seed_statistics(reply, k, self.settings.clip)
            if used and not statistics:
                raise Rejected("FedKSeed-Pro statistics (used, abs_sums, steps) missing or impossible for clipped steps")
            indices = [j for j, _, _ in statistics]
            if len(set(indices)) != len(indices):
                raise Rejected("FedKSeed-Pro statistics name a candidate twice")
            counted = sum(n for _, _, n in statistics)
            if sent.steps is not None and counted > sent.steps:
                raise Rejected(f"FedKSeed-Pro statistics count {counted} steps in {sent.steps} local steps")
            used, sums, steps = ([row[column] for row in statistics] for column in range(3))
            return replace(reply, config={"used": used, "abs_sums": sums, "steps": steps})
        return reply

    def aggregate(self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]) -> ServerState:
        k, lr = self.settings.num_seeds, self.settings.lr
        if not replies:
            return skip_round(state, round, self.settings)
        shares = np.asarray(client_shares(replies, self.settings.weighting))
        mean = (np.asarray([r.scalars for _, r in replies], dtype=np.float64) * shares[:, None]).sum(0)
        coefficients = np.asarray([-lr * float(g) for g in mean], dtype=np.float32).tolist()  # as the wire rounds
        records = wire_records(candidate_seeds(int(state.info["base_seed"]), k), coefficients)
        info = dict(state.info)
        info["accumulated"] = [a + c for a, c in zip(state.info["accumulated"], coefficients)]
        if self.pro:
            # every client's every step joins its seed's history, unweighted, as in the official code
            abs_sums, steps = list(state.info["abs_sums"]), list(state.info["steps"])
            for _, reply in replies:
                for j, total, count in zip(reply.config["used"], reply.config["abs_sums"], reply.config["steps"]):
                    abs_sums[j] += total
                    steps[j] += count
            info["abs_sums"], info["steps"] = abs_sums, steps
        return apply_round(state, round, records, [c for c, _ in replies], self.settings, self.settings.sampler, info)

    def rebuild_from_initial(self, state: ServerState) -> dict[str, torch.Tensor]:
        """The global model as the paper's server computes it: initial weights + Σ_j accumulated_j·z_j."""
        weights = [tensor.clone() for tensor in state.buffers.values()]
        seeds = candidate_seeds(int(state.info["base_seed"]), self.settings.num_seeds)
        replay_(weights, list(zip(seeds, state.info["accumulated"])), self.settings.sampler, Scratch())
        return dict(zip(state.buffers, weights))


# Where FedKSeed and FedKSeed-Pro differ from the official code (alibaba/FederatedScope, branch FedKSeed).
DIFFERS = (
    "trainable part: the config's (the shipped configs: LoRA r=8; benchmarks/reproduce's fedkseed-bytes and "
    "zorba-memory: full); official: full-parameter",
    "lr 3e-7 is the README scripts' value (main.py's argparse default is 1e-3); K 4096 is main.py's default and "
    "the paper's, the README scripts pass -K 1024",
    "local steps and batch come from the config (official: 200 steps of batch 1 a round)",
    f"directions: {OWN_DIRECTIONS}",
    "the server applies each round's coefficients incrementally (official: rebuilds from the initial weights and "
    "the accumulated scalars; equal to float rounding, tested)",
    "downlink: the weights, or `replay` bounded by max_lag rounds (official: each client copies the server's model)",
    "no grad_clip or weight_decay option (official: both off by default)",
)
OFFICIAL_DEFAULTS = {"lr": 3e-7, "mu": 5e-4, "num_seeds": 4096, "clip": 1000.0, "weighting": "examples",
                     "estimator": "central"}

ENTRY = AlgorithmEntry(
    name="fedkseed",
    description="FedKSeed: K shared candidate seeds, K scalars up (Qin et al., ICML 2024)",
    settings=FedKSeedSettings,
    build=partial(FedKSeed, pro=False),
    basis="paper + official code (alibaba/FederatedScope, branch FedKSeed)",
    official_defaults=OFFICIAL_DEFAULTS,
    differs=DIFFERS,
)
PRO_ENTRY = AlgorithmEntry(
    name="fedkseed-pro",
    description="FedKSeed-Pro: candidate seeds sampled by their past |g| (Qin et al., ICML 2024)",
    settings=FedKSeedSettings,
    build=partial(FedKSeed, pro=True),
    basis="paper + official code, as fedkseed; its probabilities: the official calculate_probabilities "
    "(min-max of mean |clip g| per seed, softmax at 1)",
    official_defaults=OFFICIAL_DEFAULTS,
    differs=DIFFERS,
)
