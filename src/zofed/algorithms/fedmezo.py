"""FedMeZO (Ling et al., KDD 2024): FedAvg whose local optimiser is MeZO.

Each sampled client starts from the global trainable weights, runs one two-point ZO step per
local batch, and uploads its final weights (as published) or, with `upload: seeds` (our
extension), only its (seed, g) records, from which the server rebuilds the same weights. The
server takes the plain mean (`weighting: uniform`, the default): the official code weights every
client by H×batch, equal for all, and the paper's objective is (1/N)·Σ f_i. `weighting: examples`
weights by the server's count of each client's examples instead.

Published defaults (paper Appendix B.3): μ = 1e-3, η_0 = 1e-5 (Dolly/Alpaca; 2e-5 CodeAlpaca,
2.5e-5 GSM8K), batch 1, H = 30, LoRA r = 128, α = 256. configs/*.yaml set values tuned for
SmolLM2-135M on a CPU explicitly. The loss a step reports is L+ (`step_loss: plus`), as the
official client and MeZO report it; the round-wise and five-round signals are built from it.

Personalised learning rate (paper §3.4/§5.4): η_i = η_0·(1 + α·Φ_i) with
Φ_i = (s_i − mean s)/max|s − mean s| over the round's sampled clients that have a signal
(0 for the others, and for all when the signals are equal). Signals s_i:
  frozen      η_0 for everyone
  random      η_i ~ U[η_0(1−α), η_0(1+α)] per client per round (seeded)
  round-wise  the client's mean training loss (L+ per step) in its last round
  five-round  its mean over its last 5 rounds (η_0 until it has 5)
  model-diff  Σ over tensors of ‖Δ_i − Δ̄‖_F in its last round, Δ̄ the unweighted mean of the
              round's client deltas (as the official client.py; not the aggregated step, which
              a weighting or a server optimiser would move)
Ours, for the trust model (docs/reliability.md): a loss signal is the client's own claim, so before Φ
the round's signals are clipped to [m/5, 5m] around their median m (`winsorised`): in range, the
published rule is unchanged; one absurd claim moves only its own rate, within [η_0(1−α), η_0(1+α)],
and the others' rates are what they would be had it claimed 5m.
With `upload: seeds` the server may also send `downlink: replay` (see algorithms/downlink.py):
the round's records instead of the weights to clients that keep their model.

Server optimiser (our extension, zofed.serveropt): with `server_optimizer` set, the server feeds
the pseudo-gradient θ − mean (weights upload), or −Σ w_k·c_kt·z_kt rebuilt from the averaged
records (seeds upload), to that optimiser instead of taking the mean as the new model. It needs
`downlink: weights`: the optimiser's step is not a list of records a client could replay. Unset
(the default), the server is exactly the averaging above.

The official code handles exactly three clients; this works for any number and for partial
participation because the server computes Φ from whatever history it has.
Only the history-based strategies (round-wise, five-round, model-diff) keep a record per client
that has replied; frozen and random keep nothing per client, so the server's state does not grow
with the number of clients.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Literal

from pydantic import Field, model_validator

from zofed.algorithms.base import (
    AlgorithmEntry,
    ClientEnv,
    Sent,
    ServerState,
    accept_common,
    assigned_lr,
    current_weights,
    initial_state,
    mezo_step_seeds,
    sample_weighted_mean,
    zo_metrics,
)
from zofed.algorithms.downlink import DownlinkSettings, apply_round, model_message, skip_round, wire_records
from zofed.algorithms.serverstep import optimizer_step, pseudo_gradient
from zofed.algorithms.settings import OWN_DIRECTIONS, LearningRate, PositiveFloat, ZOClientConfig
from zofed.algorithms.weighting import WEIGHTING_HELP, Weighting, client_shares
from zofed.lazy import lazy_import
from zofed.messages import Message
from zofed.serveropt import ServerOptimizerSettings, build_server_optimizer
from zofed.zo import Scratch, mix_seed, replay_, zo_step

torch = lazy_import("torch")  # imported on first use: the registry reads this module without torch

LrStrategy = Literal["frozen", "random", "round-wise", "five-round", "model-diff"]
HISTORY_LENGTH = 5
SIGNAL_RANGE = 5.0  # round-wise/five-round/model-diff: signals count within this factor of the round's median


class FedMeZOSettings(DownlinkSettings):
    lr: LearningRate = Field(1e-5, description="η_0, the base learning rate (paper: 1e-5), or auto")
    mu: PositiveFloat = Field(1e-3, description="perturbation scale (paper: 1e-3)")
    weighting: Weighting = Field("uniform", description=WEIGHTING_HELP)
    lr_strategy: LrStrategy = "frozen"
    lr_alpha: float = Field(0.5, ge=0, lt=1, description="α: sensitivity of η_i to Φ_i")
    upload: Literal["weights", "seeds"] = "weights"
    server_optimizer: ServerOptimizerSettings | None = Field(
        None, description="optimiser for the averaged pseudo-gradient; none: the mean is the new model"
    )

    @property
    def shared_coordinates(self) -> bool:
        """Whether every client's upload lives on the same coordinates (robust median/trimmed mean need it)."""
        return self.upload == "weights"

    @property
    def replays_directions(self) -> bool:
        """As published (weights up, weights down) no one but the client ever draws its directions."""
        return self.upload == "seeds" or self.downlink == "replay"

    @model_validator(mode="after")
    def _replay_needs_seeds(self) -> "FedMeZOSettings":
        if self.downlink == "replay" and self.upload != "seeds":
            raise ValueError("downlink: replay needs upload: seeds (a weights upload cannot be replayed)")
        if self.downlink == "replay" and self.server_optimizer is not None:
            raise ValueError("server_optimizer needs downlink: weights (an optimiser step cannot be replayed)")
        return self


class FedMeZO:
    def __init__(self, settings: FedMeZOSettings) -> None:
        self.settings = settings
        self.optimizer = None if settings.server_optimizer is None else build_server_optimizer(settings.server_optimizer)

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        return initial_state(weights, {"seed": seed, "history": {}})

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        s = self.settings
        rates = personalised_lrs(s, state.info, round, clients)
        config = {**s.client_config(state), "upload": s.upload}
        return [model_message(state, round, client, {**config, "lr": rate}, s) for client, rate in zip(clients, rates)]

    def train(self, message: Message, env: ClientEnv) -> Message:
        round, config = message.round, message.config
        zo = ZOClientConfig.of(config, env.tensors[0].device)
        scratch = Scratch()
        seeds, grads, losses, skipped = [], [], [], 0
        for step, batch in enumerate(env.batches):
            result = zo_step(env.tensors, partial(env.loss, batch), mix_seed(env.seed, step), zo.mu, zo.lr,
                             zo.directions, scratch, zo.step_loss, estimator=zo.estimator)
            # every step is a record the server can count; a skipped one moves nothing (g = 0)
            seeds.append(result.seed)
            grads.append(0.0 if result.skipped else result.projected_grad)
            if result.skipped:
                skipped += 1
            else:
                losses.append(result.loss)
        metrics = zo_metrics(env, losses, skipped, estimator=zo.estimator)
        if config["upload"] == "seeds":
            return Message(kind="seeds", round=round, config={"lr": zo.lr}, seeds=tuple(seeds), scalars=tuple(grads),
                           metrics=metrics)
        return Message(kind="weights", round=round, tensors=current_weights(env), metrics=metrics)

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        reply = accept_common(sent, reply, self.settings.upload)
        if reply.kind == "weights":
            return reply
        mezo_step_seeds(sent, reply.seeds, reply.scalars)
        return assigned_lr(sent, reply)

    def aggregate(
        self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]
    ) -> ServerState:
        s = self.settings
        if not replies:
            return skip_round(state, round, s)
        shares = client_shares(replies, s.weighting)
        # model-diff needs each client's weights; a seeds upload rebuilds them only then
        client_weights = None
        if s.upload == "weights" or s.lr_strategy == "model-diff":
            client_weights = [self.client_weights(state, reply) for _, reply in replies]
        if s.upload == "weights":
            mean = sample_weighted_mean(client_weights, shares)
            if self.optimizer is None:
                new_state = ServerState(weights=mean, buffers=state.buffers, info=state.info)
            else:
                new_state = optimizer_step(state, pseudo_gradient(state.weights, mean), self.optimizer)
        elif self.optimizer is not None:
            new_state = optimizer_step(state, self.records_pseudo_gradient(state, replies, shares), self.optimizer)
        else:
            # Σ_k w_k·(θ + Σ_t c_kt·z_kt) = θ + Σ_k Σ_t w_k·c_kt·z_kt: the mean as one list of records
            seeds, coeffs = [], []
            for (_, reply), share in zip(replies, shares):
                lr = float(reply.config["lr"])
                seeds.extend(reply.seeds)
                coeffs.extend(-share * lr * grad for grad in reply.scalars)
            new_state = apply_round(state, round, wire_records(seeds, coeffs), [c for c, _ in replies], s, s.sampler)
        if s.lr_strategy in ("frozen", "random"):
            return new_state  # no signal to record: the server keeps nothing per client
        history = update_history(state, replies, client_weights)
        return replace(new_state, info={**new_state.info, "history": history})

    def records_pseudo_gradient(
        self, state: ServerState, replies: Sequence[tuple[int, Message]], shares: Sequence[float]
    ) -> dict[str, torch.Tensor]:
        """θ − mean = Σ_k Σ_t w_k·η_k·g_kt·z_kt, replayed into zero float32 tensors."""
        pseudo_grad = {name: torch.zeros(t.shape, dtype=torch.float32, device=t.device) for name, t in state.weights.items()}
        records = [
            (seed, share * float(reply.config["lr"]) * grad)
            for (_, reply), share in zip(replies, shares)
            for seed, grad in zip(reply.seeds, reply.scalars)
        ]
        replay_(list(pseudo_grad.values()), records, self.settings.sampler, Scratch())
        return pseudo_grad

    def client_weights(self, state: ServerState, reply: Message) -> Mapping[str, torch.Tensor]:
        if reply.kind == "weights":
            return reply.tensors
        rebuilt = [tensor.clone() for tensor in state.weights.values()]
        lr = float(reply.config["lr"])
        records = [(seed, -lr * grad) for seed, grad in zip(reply.seeds, reply.scalars)]
        replay_(rebuilt, records, self.settings.sampler, Scratch())
        return dict(zip(state.weights, rebuilt))


def personalised_lrs(
    settings: FedMeZOSettings, info: Mapping, round: int, clients: Sequence[int]
) -> list[float]:
    base, alpha = settings.lr, settings.lr_alpha
    if settings.lr_strategy == "frozen":
        return [base] * len(clients)
    if settings.lr_strategy == "random":
        return [
            random.Random(mix_seed(int(info["seed"]), round, client)).uniform(base * (1 - alpha), base * (1 + alpha))
            for client in clients
        ]
    signals = [client_signal(settings.lr_strategy, info["history"].get(str(client))) for client in clients]
    return [base * (1 + alpha * phi) for phi in heterogeneity_index(winsorised(signals))]


def winsorised(signals: Sequence[float | None]) -> list[float | None]:
    """The signals clipped to [m/SIGNAL_RANGE, m·SIGNAL_RANGE] around their median m (a loss and a model
    difference are positive): a loss is the client's own claim, and in Φ's mean and largest deviation
    one absurd claim would set every other client's rate. Signals in that range are left as they are,
    so the published rule holds for them; a median ≤ 0 (no honest loss is) leaves every rate at η_0."""
    known = sorted(s for s in signals if s is not None and math.isfinite(s))
    if not known:
        return list(signals)
    median = known[len(known) // 2] if len(known) % 2 else 0.5 * (known[len(known) // 2 - 1] + known[len(known) // 2])
    low, high = (median / SIGNAL_RANGE, median * SIGNAL_RANGE) if median > 0 else (0.0, 0.0)
    return [s if s is None or not math.isfinite(s) else min(max(s, low), high) for s in signals]


def client_signal(strategy: str, record: Mapping | None) -> float | None:
    if record is None:
        return None
    if strategy == "round-wise":
        return record["losses"][-1] if record["losses"] else None
    if strategy == "five-round":
        losses = record["losses"]
        return sum(losses) / len(losses) if len(losses) >= HISTORY_LENGTH else None
    return record.get("model_diff")


def heterogeneity_index(signals: Sequence[float | None]) -> list[float]:
    """Φ in [-1, 1]: signals centred on their mean and scaled by the largest deviation."""
    known = [s for s in signals if s is not None and math.isfinite(s)]
    if not known:
        return [0.0] * len(signals)
    mean = sum(known) / len(known)
    spread = max(abs(s - mean) for s in known)
    if spread == 0.0:
        return [0.0] * len(signals)
    return [0.0 if s is None or not math.isfinite(s) else (s - mean) / spread for s in signals]


def update_history(
    state: ServerState,
    replies: Sequence[tuple[int, Message]],
    client_weights: Sequence[Mapping[str, torch.Tensor]] | None,
) -> dict:
    """Each replying client's recent losses and, when its weights are at hand, its model difference.

    The model difference is measured against the unweighted mean of the round's client deltas, as
    the official client.py does, whatever the weighting and the server optimiser.
    """
    history = {key: dict(value) for key, value in state.info["history"].items()}
    mean_delta = {}
    if client_weights is not None:
        mean_delta = {name: sum(weights[name].float() for weights in client_weights) / len(client_weights)
                      - state.weights[name].float() for name in state.weights}
    for index, (client, reply) in enumerate(replies):
        record = history.setdefault(str(client), {"losses": [], "model_diff": None})
        loss = float(reply.metrics["train_loss"])
        if math.isfinite(loss):
            record["losses"] = (list(record["losses"]) + [loss])[-HISTORY_LENGTH:]
        if client_weights is None:
            continue
        weights = client_weights[index]
        record["model_diff"] = sum(
            torch.linalg.vector_norm(weights[name].float() - state.weights[name].float() - mean_delta[name]).item()
            for name in state.weights
        )
    return history


ENTRY = AlgorithmEntry(
    name="fedmezo",
    description="FedMeZO: FedAvg with MeZO local steps, personalised learning rates (Ling et al., KDD 2024)",
    settings=FedMeZOSettings,
    build=FedMeZO,
    basis="paper + official code (alibaba/FederatedScope, branch FedMeZO)",
    official_defaults={"lr": 1e-5, "mu": 1e-3, "weighting": "uniform", "upload": "weights", "estimator": "central"},
    differs=(
        "trainable part: the config's (the shipped configs: LoRA r=8, alpha=16 on q/v); official: LoRA r=128, alpha=256",
        "any number of clients and partial participation (official: exactly three clients)",
        "local steps and batch come from the config (official: H = 30 steps of batch 1)",
        "round-wise, five-round, model-diff: the round's signals clipped to [m/5, 5m] around their median m before "
        "Φ (ours, for the trust model; in range the published rule)",
        f"directions: {OWN_DIRECTIONS}",
        "`upload: seeds`, `downlink: replay`, `server_optimizer` and `weighting: examples` are options "
        "(official: weights both ways, the plain mean)",
    ),
)
