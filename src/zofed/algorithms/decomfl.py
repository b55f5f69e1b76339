"""DeComFL (Li et al., ICLR 2025): server-issued seeds shared by every client, scalars both ways.

In round r the server derives one seed per (local step, perturbation) from (run seed, r); every
sampled client uses exactly those seeds, so a client returns only its K×P scalars g and the
server's update is Σ_t Σ_p (−lr/P · ḡ_{t,p}) z(seed_{t,p}), with ḡ the plain mean over clients
(`weighting: uniform`, as the official code ZidongLiu/DeComFL averages; `examples` is an option).
Communication is dimension-free both ways: it does not grow with the model.

Lagging clients catch up by replay, as in the paper and the official code, which always replays:
`downlink: replay` is the default. The server keeps the last `max_lag` rounds of records and sends
a client those since its version; a client never seen or further behind gets the weights once
(our bound on the server's log; see algorithms/downlink.py). `downlink: weights` is an option.
Our choice where the paper leaves room: with P > 1 the P estimates of a step are all taken at the
same θ and applied together.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from zofed.algorithms.base import (
    AlgorithmEntry,
    ClientEnv,
    client_directions,
    directions_config,
    Rejected,
    Sent,
    ServerState,
    accept_common,
    register,
    zo_metrics,
)
from zofed.algorithms.downlink import Downlink, DownlinkSettings, apply_round, model_message, skip_round, wire_records
from zofed.algorithms.weighting import WEIGHTING_HELP, Weighting, client_shares
from zofed.messages import Message
from zofed.zo import (DEFAULT_POOL_SIZE, STEP_LOSS_HELP, Scratch, StepLoss, make_directions, mix_seed, perturb_,
                      zo_estimate, zo_step)

ROUND_STREAM = 0xDEC0


class DeComFLSettings(DownlinkSettings):
    lr: float = Field(1e-3, gt=0)
    mu: float = Field(1e-2, gt=0)
    perturbations: int = Field(1, ge=1, le=64, description="P directions per local step")
    directions: Literal["gaussian", "pool"] = "gaussian"
    pool_size: int = Field(DEFAULT_POOL_SIZE, ge=1024)
    downlink: Downlink = Field("replay", description="records since the client's version (official), or the weights")
    weighting: Weighting = Field("uniform", description=WEIGHTING_HELP)
    step_loss: StepLoss = Field("plus", description=STEP_LOSS_HELP)


def step_seed(base_seed: int, step: int, perturbation: int) -> int:
    return mix_seed(base_seed, step, perturbation)


def round_records(base_seed: int, coefficients: Sequence[float], perturbations: int) -> list[tuple[int, float]]:
    """(seed, coeff) for a round's coefficients laid out step-major: index = step·P + p."""
    return [
        (step_seed(base_seed, index // perturbations, index % perturbations), coeff)
        for index, coeff in enumerate(coefficients)
    ]


def same_length(replies: Sequence[tuple[int, Message]]) -> list[tuple[int, Message]]:
    """The replies of the round's common length; one of another length is dropped, not the round.

    Clients of one round run the same steps over the same seeds, so `accept` already refuses a
    length other than the one asked for; this holds where the server could not say how many steps
    it asked. The most common length wins, a tie the shorter one (padding a reply cannot outvote).
    """
    counts = Counter(len(reply.scalars) for _, reply in replies if reply.scalars)
    if not counts:
        return []
    length = min(counts, key=lambda n: (-counts[n], n))
    return [(client, reply) for client, reply in replies if len(reply.scalars) == length]


class DeComFL:
    def __init__(self, settings: DeComFLSettings) -> None:
        self.settings = settings

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        return ServerState(
            weights={name: tensor.detach().clone() for name, tensor in weights.items()},
            info={"seed": seed},
        )

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        s = self.settings
        config = {"lr": s.lr, "mu": s.mu, "perturbations": s.perturbations,
                  "base_seed": mix_seed(int(state.info["seed"]), ROUND_STREAM, round),
                  **directions_config(s, state), "step_loss": s.step_loss}
        return [model_message(state, round, client, config, s) for client in clients]

    def train(self, message: Message, env: ClientEnv) -> Message:
        round, config = message.round, dict(message.config)
        lr, mu, count = float(config["lr"]), float(config["mu"]), int(config["perturbations"])
        base_seed, step_loss = int(config["base_seed"]), str(config["step_loss"])
        directions = client_directions(config, env.tensors[0].device)
        scratch = Scratch()
        grads, losses, skipped = [], [], 0
        for step, batch in enumerate(env.batches):
            loss_at = partial(env.loss, batch)
            if count == 1:  # one direction: the 3-pass step that restores and updates at once
                result = zo_step(env.tensors, loss_at, step_seed(base_seed, step, 0), mu, lr, directions, scratch,
                                 step_loss)
                estimates = [(result.projected_grad if not result.skipped else math.nan, result.loss)]
            else:
                estimates = [zo_estimate(env.tensors, loss_at, step_seed(base_seed, step, p), mu, directions, scratch,
                                         step_loss) for p in range(count)]
            if any(not math.isfinite(g) for g, _ in estimates):
                skipped += 1
                grads.extend([0.0] * count)  # keep the step-major layout; a zero moves nothing
                continue
            if count > 1:
                for p, (g, _) in enumerate(estimates):
                    perturb_(env.tensors, step_seed(base_seed, step, p), -lr / count * g, directions, scratch)
            grads.extend(g for g, _ in estimates)
            losses.append(sum(loss for _, loss in estimates) / count)
        metrics = zo_metrics(env, losses, skipped, directions_per_step=count)
        return Message(kind="seeds", round=round, scalars=tuple(grads), metrics=metrics)

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        reply = accept_common(sent, reply, "seeds")
        if reply.seeds:
            raise Rejected("a DeComFL reply carries seeds; the server issues them")
        count = int(sent.message.config["perturbations"])
        steps = sent.steps if sent.steps is not None else len(reply.scalars) // count
        if len(reply.scalars) != steps * count or not reply.scalars:
            raise Rejected(f"{len(reply.scalars)} scalars where {steps} local steps × {count} perturbations were asked")
        return reply

    def aggregate(self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]) -> ServerState:
        s = self.settings
        replies = same_length(replies)
        if not replies:
            return skip_round(state, round, s)
        shares = np.asarray(client_shares(replies, s.weighting))
        grads = np.asarray([reply.scalars for _, reply in replies], dtype=np.float64)
        mean = (grads * shares[:, None]).sum(axis=0)
        coefficients = [-s.lr / s.perturbations * float(g) for g in mean]
        base_seed = mix_seed(int(state.info["seed"]), ROUND_STREAM, round)
        records = round_records(base_seed, coefficients, s.perturbations)
        seeds, coeffs = zip(*records)
        return apply_round(state, round, wire_records(seeds, coeffs), [c for c, _ in replies], s, self._directions())

    def _directions(self):
        return make_directions(self.settings.directions, self.settings.pool_size)


register(AlgorithmEntry(
    name="decomfl",
    description="DeComFL: server-issued shared seeds, P scalars per step both ways (Li et al., ICLR 2025)",
    settings=DeComFLSettings,
    build=DeComFL,
    basis="paper + official code (ZidongLiu/DeComFL); ours: the weights fallback past max_lag rounds",
))
