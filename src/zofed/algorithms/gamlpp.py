"""GAM-LPP (Chen, Yang, Quek, Chong, ACL 2026): global adaptive momentum, local personalised perturbation.

Only the abstract is public; DESIGN.md §4 is our definition. One round:

  1. The server sends each sampled client the global weights and that client's energy EMA E_i
     (one value per trainable tensor, kept server-side in ServerState.info; None for a client
     never seen).
  2. Local personalised perturbation. The client turns E_i into per-tensor scales s_i, then runs
     H two-point ZO steps along z = s_i ⊙ ξ, ξ from the configured sampler (gaussian or pool).
     Scales (n_t = numel of tensor t, N = Σ n_t, λ = `mix`, γ = `energy_exponent`):
         ŝ_t² = N · E_t^γ / Σ_u n_u E_u^γ               (personalised, Σ n_t ŝ_t² = N)
         s_t² = (1 − λ) + λ · ŝ_t²                        (mixed with uniform)
     so Σ_t n_t s_t² = N: E‖z‖² is the isotropic case's for every λ, and s_t² ≥ 1 − λ keeps
     every tensor perturbed. λ = 0, or no EMA yet, gives s_t = 1.0 exactly, and the round is
     bit-identical to FedMeZO's isotropic steps (tested).
  3. Energy estimate, from the client's own ZO estimates of this round. Step k's estimate of
     tensor t's gradient is g_k·s_t·ξ_kt, whose mean is s_t²·∇_t: a tensor already perturbed
     more looks steeper. Dividing the current scale out, g_k·ξ_kt / s_t estimates ∇_t whatever
     s is, so the scales do not feed on themselves (tested: without it they run away). Per
     element, over the round's H steps that estimated (not the skipped ones), with A_t = Σ_k g_k ξ_kt:
         e_t = max(0, ‖A_t‖²/n_t − c·Σ_k g_k²) / (H² · s_t²)
     c·Σ_k g_k² (c = 1 with `subtract_noise`) removes the estimate's noise floor: with
     E[ξ²] = 1 the noise adds about Σ_k g_k² per element to ‖A_t‖²/n_t in every tensor alike.
     A_t is rebuilt after the steps by replaying (seed, g) into one zero buffer per tensor, so it
     costs no extra memory beyond the largest tensor and no forward pass.
     EMA: E_t ← β·E_t + (1 − β)·e_t (β = `ema_decay`), initialised with the first e_t. A round
     with no usable step leaves E unchanged.
  4. Upload: (seed, g) per step (float32 g; g = 0 for a skipped step), plus s_i (the scales used) and the updated E_i in
     the reply's config. The server rebuilds each client's update θ_i − θ = −η Σ_k g_k z_k by
     replaying (seed, g) with the same scaled sampler, and forms the weighted pseudo-gradient
     Δ = Σ_i w_i (θ − θ_i) (serveropt's convention: old − new), w_i = n_i / Σ n by the server's
     example counts (`weighting: examples`, our choice: the abstract is silent and FedAvg/FedAdam
     weigh by examples; `uniform` gives w_i = 1/m).
  5. Global adaptive momentum: Δ goes through the configured server optimiser (serveropt; default
     Adam with bias correction, η_s = 1e-2, β1 = 0.9, β2 = 0.99, τ = 1e-3; AMSGrad, Yogi, SGD with momentum
     and clipping available). Its state lives in ServerState buffers ("serveropt/...") and
     info["serveropt"], so resume is bit-identical.
  6. Downlink: the new trainable weights (their bytes are counted by the transport).

Choices where the abstract is silent, all settings: the energy's exponent γ (0.5: s_t² grows
like the RMS gradient), the EMA decay, the mixing λ (0.5), subtracting the noise floor, and
per-tensor (not per-element) scales so s_i costs one float per tensor on the wire. λ must be
below 1 so no tensor is frozen (its energy could then never be measured again).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial

from pydantic import Field

from zofed.algorithms.base import (
    AlgorithmEntry,
    ClientEnv,
    Rejected,
    Sent,
    ServerState,
    accept_common,
    initial_state,
    mezo_step_seeds,
    zo_metrics,
)
from zofed.algorithms.serverstep import optimizer_step
from zofed.algorithms.settings import ZOClientConfig, ZOSettings
from zofed.algorithms.weighting import client_shares
from zofed.lazy import lazy_import
from zofed.messages import Message
from zofed.serveropt import ServerOptimizerSettings, build_server_optimizer
from zofed.zo import DirectionSampler, Scratch, mix_seed, replay_, zo_step
from zofed.zo.perturb import no_grad
from zofed.zo.scaled import ScaledDirections

torch = lazy_import("torch")  # imported on first use: the registry reads this module without torch


class GamLppSettings(ZOSettings):
    mix: float = Field(0.5, ge=0, lt=1, description="λ: weight of the personalised scales against uniform")
    ema_decay: float = Field(0.9, ge=0, lt=1, description="β of each client's per-tensor energy EMA")
    energy_exponent: float = Field(0.5, ge=0, le=2, description="γ: personalised s_t² ∝ E_t^γ")
    subtract_noise: bool = Field(True, description="remove the ZO estimate's noise floor from the energy")
    server_optimizer: ServerOptimizerSettings = Field(
        default_factory=ServerOptimizerSettings, description="applied to the averaged pseudo-gradient"
    )

    @property
    def replays_directions(self) -> bool:
        """The server rebuilds every client's update from its seeds and scales."""
        return True


def personal_scales(
    energy: Sequence[float] | None, numels: Sequence[int], mix: float, exponent: float
) -> list[float]:
    """s_t with Σ n_t s_t² = Σ n_t, from the per-tensor energy EMA (uniform without one)."""
    if energy is None or mix == 0.0:
        return [1.0] * len(numels)
    if len(energy) != len(numels):
        raise ValueError(f"energy has {len(energy)} values for {len(numels)} trainable tensors")
    raw = [max(float(e), 0.0) ** exponent for e in energy]
    total = sum(n * r for n, r in zip(numels, raw))
    if not (math.isfinite(total) and total > 0.0):
        return [1.0] * len(numels)
    size = float(sum(numels))
    return [math.sqrt((1.0 - mix) + mix * size * r / total) for r in raw]


@no_grad
def round_energies(
    tensors: Sequence[torch.Tensor],
    seeds: Sequence[int],
    grads: Sequence[float],
    scales: Sequence[float],
    base: DirectionSampler,
    subtract_noise: bool,
) -> list[float]:
    """e_t per tensor from the round's (seed, g) records, the current scale divided out (docstring §3)."""
    steps = len(seeds)
    noise = sum(g * g for g in grads) if subtract_noise else 0.0
    scratch = Scratch()
    energies = []
    for index, (tensor, scale) in enumerate(zip(tensors, scales)):
        accumulated = torch.zeros(tensor.shape, dtype=torch.float32, device=tensor.device)
        for seed, grad in zip(seeds, grads):
            base.add_(accumulated, seed, index, grad, scratch.take(tensor.shape, tensor.device))
        per_element = float(accumulated.double().square().sum()) / tensor.numel()
        energies.append(max(per_element - noise, 0.0) / (steps * steps * scale * scale))
    return energies


def updated_ema(previous: Sequence[float] | None, energies: Sequence[float], decay: float) -> list[float]:
    if previous is None:
        return list(energies)
    return [decay * float(old) + (1.0 - decay) * new for old, new in zip(previous, energies)]


class GamLpp:
    def __init__(self, settings: GamLppSettings) -> None:
        self.settings = settings
        self.optimizer = build_server_optimizer(settings.server_optimizer)

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        return initial_state(weights, {"seed": seed, "energy": {}})

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        s = self.settings
        config = {**s.client_config(state), "mix": s.mix, "ema_decay": s.ema_decay,
                  "energy_exponent": s.energy_exponent, "subtract_noise": s.subtract_noise}
        energy = state.info["energy"]
        return [
            Message(kind="weights", round=round, config={**config, "energy": energy.get(str(client))},
                    tensors=state.weights)
            for client in clients
        ]

    def train(self, message: Message, env: ClientEnv) -> Message:
        config = message.config
        zo = ZOClientConfig.of(config, env.tensors[0].device)
        base = zo.directions
        previous = config["energy"]
        scales = personal_scales(previous, [t.numel() for t in env.tensors], float(config["mix"]),
                                 float(config["energy_exponent"]))
        directions = ScaledDirections(base, scales)
        scratch = Scratch()
        records, used, losses, skipped = [], [], [], 0  # every step's (seed, g); the steps that moved θ
        for step, batch in enumerate(env.batches):
            result = zo_step(env.tensors, partial(env.loss, batch), mix_seed(env.seed, step), zo.mu, zo.lr, directions,
                             scratch, zo.step_loss, estimator=zo.estimator)
            records.append((result.seed, 0.0 if result.skipped else result.projected_grad))
            if result.skipped:
                skipped += 1
                continue
            used.append(records[-1])
            losses.append(result.loss)
        energy = previous
        if used:  # the energy comes from the steps that estimated something (H = their count)
            seeds, grads = zip(*used)
            energies = round_energies(env.tensors, seeds, grads, scales, base, bool(config["subtract_noise"]))
            energy = updated_ema(previous, energies, float(config["ema_decay"]))
        metrics = zo_metrics(env, losses, skipped, estimator=zo.estimator) | {"scale_min": min(scales),
                                                                               "scale_max": max(scales)}
        return Message(kind="seeds", round=message.round, config={"scales": scales, "energy": energy},
                       seeds=tuple(seed for seed, _ in records), scalars=tuple(g for _, g in records), metrics=metrics)

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        """Scales computed on the server from the energy it sent; the new energy bounded and checked."""
        reply = accept_common(sent, reply, "seeds")
        mezo_step_seeds(sent, reply.seeds, reply.scalars)
        config = sent.message.config
        numels = [tensor.numel() for tensor in state.weights.values()]
        scales = personal_scales(config["energy"], numels, float(config["mix"]), float(config["energy_exponent"]))
        claimed = reply.config.get("scales")
        if not isinstance(claimed, list) or len(claimed) != len(scales) or not all(
                isinstance(c, (int, float)) and math.isclose(c, s, rel_tol=1e-12) for c, s in zip(claimed, scales)):
            raise Rejected(f"scales are not the {len(scales)} the server computes from the energy it sent")
        energy = reply.config.get("energy")
        # a round whose every g is 0 (every step skipped) may keep the energy it was sent; any other
        # energy, and every energy after a step that moved, must be one the server can use
        unchanged = energy == config["energy"] and not any(reply.scalars)
        if not unchanged and (not isinstance(energy, list) or len(energy) != len(numels) or not all(
                isinstance(e, (int, float)) and math.isfinite(e) and e >= 0 for e in energy)):
            raise Rejected(f"energy is not {len(numels)} finite non-negative values")
        return replace(reply, config={"scales": scales, "energy": energy})

    def aggregate(self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]) -> ServerState:
        if not replies:
            return state
        s = self.settings
        shares = client_shares(replies, s.weighting)
        pseudo_grad = {name: torch.zeros(t.shape, dtype=torch.float32, device=t.device) for name, t in state.weights.items()}
        base, scratch = s.sampler, Scratch()
        for (_, reply), share in zip(replies, shares):
            scales = reply.config["scales"]  # the server's own, put there by `accept`
            # θ − θ_i = Σ_k η·g_k·z_k: replay with coefficients +w_i·η·g_k into the zero pseudo-gradient
            records = [(seed, share * s.lr * grad) for seed, grad in zip(reply.seeds, reply.scalars)]
            replay_(list(pseudo_grad.values()), records, ScaledDirections(base, scales), scratch)
        energy = dict(state.info["energy"]) | {str(client): reply.config["energy"] for client, reply in replies}
        return optimizer_step(state, pseudo_grad, self.optimizer, info={**state.info, "energy": energy})


def client_update(state_weights: Mapping[str, torch.Tensor], reply: Message, settings: GamLppSettings) -> dict[str, torch.Tensor]:
    """The client's weights θ_i rebuilt on the server from (seed, g) and s_i (for tests and analysis)."""
    rebuilt = [tensor.clone() for tensor in state_weights.values()]
    records = [(seed, -settings.lr * grad) for seed, grad in zip(reply.seeds, reply.scalars)]
    replay_(rebuilt, records, ScaledDirections(settings.sampler, reply.config["scales"]), Scratch())
    return dict(zip(state_weights, rebuilt))


ENTRY = AlgorithmEntry(
    name="gamlpp",
    description="GAM-LPP: personalised per-tensor ZO perturbation, seed uplink, server adaptive momentum "
    "(Chen et al., ACL 2026)",
    settings=GamLppSettings,
    build=GamLpp,
    basis="abstract only: per-client perturbation, seed upload, server adaptive momentum; ours: the "
    "scales, energy EMA and their settings",
    differs=("no official code is public: beyond the abstract everything is ours, lr 1e-3, μ 1e-2 and the server's "
             "Adam (lr 1e-2) included",),
)
