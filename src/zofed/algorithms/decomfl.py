"""DeComFL (Li et al., ICLR 2025): server-issued seeds shared by every client, scalars both ways.

In round r the server derives one seed per (local step, perturbation) from (run seed, r); every
sampled client uses exactly those seeds, so a client returns only its K×P scalars g and the
server's update is Σ_t Σ_p (−lr/P · ḡ_{t,p}) z(seed_{t,p}), with ḡ the plain mean over clients
(`weighting: uniform`, as the official code ZidongLiu/DeComFL averages; `examples` is an option).
Communication is dimension-free both ways: it does not grow with the model. The defaults lr 1e-4,
μ 1e-3 and P = 1 are the official CLI's (`zofed list` and docs/methods.md list every difference).

Lagging clients catch up by replay, as in the paper and the official code, which always replays:
`downlink: replay` is the default. The server keeps the last `max_lag` rounds of records and sends
a client those since its version; a client never seen or further behind gets the weights once
(our bound on the server's log; see algorithms/downlink.py). `downlink: weights` is an option.
Our choice where the paper leaves room: with P > 1 the P estimates of a step are all taken at the
same θ and applied together. `estimator: forward` is the official code's `rge-forward`: L(θ)
once per step, shared by its P directions (P + 1 forwards a step instead of 2P).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
from zofed.algorithms.downlink import Downlink, DownlinkSettings, apply_round, model_message, skip_round, wire_records
from zofed.algorithms.settings import OWN_DIRECTIONS, LearningRate, PositiveFloat, ZOClientConfig
from zofed.algorithms.weighting import WEIGHTING_HELP, Weighting, client_shares
from zofed.messages import Message
from zofed.zo import Scratch, mix_seed, perturb_, two_point, zo_step

if TYPE_CHECKING:  # annotations only: importing this module (the registry does) does not import torch
    import torch

ROUND_STREAM = 0xDEC0


class DeComFLSettings(DownlinkSettings):
    # The official CLI's defaults (ZidongLiu/DeComFL, experiment_helper/cli_parser.py: OptimizerSetting.lr,
    # RGESetting.mu); its README's LLM example passes --lr=1e-5 --num-pert=5 --grad-estimate-method=rge-forward.
    lr: LearningRate = Field(1e-4, description="η, the learning rate (official CLI default: 1e-4), or auto")
    mu: PositiveFloat = Field(1e-3, description="μ, the perturbation scale (official CLI default: 1e-3)")
    perturbations: int = Field(1, ge=1, le=64, description="P directions per local step")
    downlink: Downlink = Field("replay", description="records since the client's version (official), or the weights")
    weighting: Weighting = Field("uniform", description=WEIGHTING_HELP)

    @property
    def scalars_per_step(self) -> int:
        return self.perturbations

    @property
    def replays_directions(self) -> bool:
        """The server and every lagging client replay the round's shared seeds."""
        return True


def step_seed(base_seed: int, step: int, perturbation: int) -> int:
    return mix_seed(base_seed, step, perturbation)


def round_records(base_seed: int, coefficients: Sequence[float], perturbations: int) -> list[tuple[int, float]]:
    """(seed, coeff) for a round's coefficients laid out step-major: index = step·P + p."""
    return [
        (step_seed(base_seed, index // perturbations, index % perturbations), coeff)
        for index, coeff in enumerate(coefficients)
    ]


class DeComFL:
    def __init__(self, settings: DeComFLSettings) -> None:
        self.settings = settings

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        return initial_state(weights, {"seed": seed})

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        s = self.settings
        config = {**s.client_config(state), "perturbations": s.perturbations,
                  "base_seed": mix_seed(int(state.info["seed"]), ROUND_STREAM, round)}
        return [model_message(state, round, client, config, s) for client in clients]

    def train(self, message: Message, env: ClientEnv) -> Message:
        round, config = message.round, message.config
        zo = ZOClientConfig.of(config, env.tensors[0].device)
        count, base_seed = int(config["perturbations"]), int(config["base_seed"])
        scratch = Scratch()
        grads, losses, skipped = [], [], 0
        for step, batch in enumerate(env.batches):
            loss_at = partial(env.loss, batch)
            if count == 1:  # one direction: the step that restores and updates in its last pass
                result = zo_step(env.tensors, loss_at, step_seed(base_seed, step, 0), zo.mu, zo.lr, zo.directions,
                                 scratch, zo.step_loss, estimator=zo.estimator)
                estimates = [(result.projected_grad if not result.skipped else math.nan, result.loss)]
            else:
                base_loss = loss_at() if zo.estimator == "forward" else None  # L(θ) once, shared by the P directions
                estimates = [two_point(env.tensors, loss_at, step_seed(base_seed, step, p), zo.mu, zo.directions,
                                       scratch, zo.step_loss, estimator=zo.estimator, base_loss=base_loss)
                             for p in range(count)]
            if any(not math.isfinite(g) for g, _ in estimates):
                skipped += 1
                grads.extend([0.0] * count)  # keep the step-major layout; a zero moves nothing
                continue
            if count > 1:
                for p, (g, _) in enumerate(estimates):
                    perturb_(env.tensors, step_seed(base_seed, step, p), -zo.lr / count * g, zo.directions, scratch,
                             rounding="stochastic")
            grads.extend(g for g, _ in estimates)
            losses.append(sum(loss for _, loss in estimates) / count)
        metrics = zo_metrics(env, losses, skipped, directions_per_step=count, estimator=zo.estimator)
        return Message(kind="seeds", round=round, scalars=tuple(grads), metrics=metrics)

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        reply = accept_common(sent, reply, "seeds")
        if reply.seeds:
            raise Rejected("a DeComFL reply carries seeds; the server issues them")
        count = int(sent.message.config["perturbations"])
        steps = sent.steps if sent.steps is not None else len(reply.scalars) // count
        if len(reply.scalars) != steps * count or not reply.scalars:
            raise Rejected(f"{len(reply.scalars)} scalars for {steps} local steps × {count} perturbations")
        return reply

    def aggregate(self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]) -> ServerState:
        s = self.settings
        if not replies:
            return skip_round(state, round, s)
        shares = np.asarray(client_shares(replies, s.weighting))
        # `accept` holds every reply to the steps the server asked for; where it could not say how
        # many (sent.steps None) a shorter reply counts as skipped steps (zeros) past its end
        grads = np.zeros((len(replies), max(len(reply.scalars) for _, reply in replies)), dtype=np.float64)
        for row, (_, reply) in enumerate(replies):
            grads[row, : len(reply.scalars)] = reply.scalars
        mean = (grads * shares[:, None]).sum(axis=0)
        coefficients = [-s.lr / s.perturbations * float(g) for g in mean]
        base_seed = mix_seed(int(state.info["seed"]), ROUND_STREAM, round)
        records = round_records(base_seed, coefficients, s.perturbations)
        seeds, coeffs = zip(*records)
        return apply_round(state, round, wire_records(seeds, coeffs), [c for c, _ in replies], s, s.sampler)


ENTRY = AlgorithmEntry(
    name="decomfl",
    description="DeComFL: server-issued shared seeds, P scalars per step both ways (Li et al., ICLR 2025)",
    settings=DeComFLSettings,
    build=DeComFL,
    basis="paper + official code (ZidongLiu/DeComFL)",
    official_defaults={"lr": 1e-4, "mu": 1e-3, "perturbations": 1, "estimator": "central", "weighting": "uniform",
                       "downlink": "replay"},
    differs=(
        "trainable part: the config's (the shipped configs: LoRA); official: full-parameter (`--lora` off by default)",
        "the defaults are the CLI's (`rge-central`, P 1); the README's LLM example (`rge-forward`, P 5, lr 1e-5) "
        "is `estimator: forward`, `perturbations: 5`, `lr: 1e-5` here",
        "the step is plain SGD; official: torch SGD (`--optim`) with `--momentum` (default 0: the same step), "
        "no momentum option here",
        f"directions: {OWN_DIRECTIONS}; the round's seeds come from (run seed, round)",
        "a client never seen or more than max_lag rounds behind gets the weights once (official: always replays)",
        "`downlink: weights` and `weighting: examples` are options (official: replay, the plain mean)",
    ),
)
