"""ZorBA (Meng, Tang, Wong, arXiv 2603.04436): each client trains only the blocks its memory allows.

Blocks are the transformer layers. The server assigns client n a binary vector a_n over the
layers under its memory budget (zorba_solver: minimise the convergence proxy B, then the total
memory within (1 + eps)·B*). Client n then:

  * keeps its inactive layers frozen in low precision (`inactive_dtype`, bf16 by default) and its
    active layers, trainable tensors included, in full precision — so its memory really falls
    with fewer active blocks;
  * takes MeZO steps along directions of its active layers' trainable tensors only (tensor i's
    direction is z(seed, i) for its index in the full view, so the server rebuilds it);
  * uploads one (seed, g) per local step and the view ranges of each active layer.

The server averages each block over the clients that trained it: θ_l += Σ_{n covers l} w_n Δ_{n,l}
/ Σ_{n covers l} w_n; a block nobody trained this round is unchanged. w_n is the server's count
of client n's examples (`weighting: examples`, our choice: the abstract is silent; `uniform`
gives w_n = 1).

Downlink (`downlink: replay`, the default): the abstract names frequent model exchange as the
communication problem, so a client that keeps its model receives the round's block records
(seed, coeff, layer) since its version — O(clients × active layers × local steps) scalars, not
the model — and replays each record on its layer's tensors only (algorithms/downlink.py, block
records). A client never seen, or behind by more than `max_lag` rounds, gets the weights with its
inactive layers in `inactive_dtype`, as `downlink: weights` sends them every round: the memory
budget holds on first contact too. So a client's kept copy of a layer it does not train differs
from the server's by that one rounding (records then add the same float32 coefficients on both
sides, so it stays at that rounding, up to float32 addition order); it runs such layers in
`inactive_dtype` anyway. The layers active for it when it synced, and every tensor the server
cannot place in a layer, are bit for bit the server's (tested). With `resolve_every`, a layer that
becomes active for a client later starts from its copy, off by that one rounding.
The kept copy stays out of the client's memory (runtime/client.py): saved to its disk from the
model's own tensors before training, loaded straight back into them next round, one tensor at a
time. Held in memory it made a full-parameter SmolLM2 client of the `mixed` profile's smallest
device peak at 1,405 MB against its 1,107 MB budget; streamed, it peaks at 1,068 MB on first
contact and 786 MB in its steady state (tests/runtime/test_prepare.py).

Memory model V_n(a_n) = base + Σ_l a_nl·m_l, with base and m_l *measured* in a client process of
their own at start-up unless `memory_profile` is given: the registry entry's preparation
(`PROFILE`, run by runtime/prepare.py) measures the peak RSS of client 0's round with the first
1, L/4, L/2 and L layers active, each downlink built by `configure` itself, and fits it. Budgets come from
`budgets_mb` (one per client) or a named device profile: client n can hold a fraction f of the
layers (f cycling through the profile's fractions, `DEVICE_PROFILES`), so its budget is
base·(1 + headroom) + max(1, round(f·L))·max_l m_l. The plan counts base·(1 + headroom) (2% by
default): measured peaks vary a little from process to process, and a budget is a hard limit.

Our choices where the paper's abstract is silent (all configurable):
  - Tensors outside the layers (embeddings, final norm, an untied head) are never trained and stay
    in the model's precision: the loss read off a bf16 head would drown the two-point difference.
  - The assignment is solved once, at init, over all clients. `resolve_every` = R > 0 re-solves every
    R rounds with each uncovered block's penalty grown by the rounds since it was last trained,
    so tight budgets rotate coverage instead of leaving the same blocks untrained for ever.
  - `eps` = 0.05: accept a 5% worse proxy for less total memory.
  - One lr and mu for every block (MeZO's), seeds per step derived from the client's seed.
  - Weights travel with each client's inactive layers already in `inactive_dtype` (the client
    would cast them on arrival anyway), so the downlink and the client's receive buffer shrink
    with its budget too. The server places a tensor in a layer by its name (`layers.i`, GPT-2's
    `h.i`); a tensor it cannot place travels in full precision.
  - The local runtime simulates every client with one shared model, so it keeps the full-precision
    originals of lowered layers and restores them after each client (numerics as a real client,
    memory not); a client process of its own does not keep them (benchmarks/zorba_memory.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from zofed.algorithms import zorba_solver
from zofed.algorithms.base import (
    AlgorithmEntry,
    ClientEnv,
    Preparation,
    PrepareEnv,
    Probe,
    ProbeResult,
    Rejected,
    Sent,
    ServerState,
    accept_common,
    assigned_lr,
    initial_state,
    mezo_step_seeds,
    name_layer,
    zo_metrics,
)
from zofed.algorithms.downlink import Downlink, DownlinkSettings, apply_round, model_message
from zofed.algorithms.settings import PositiveFloat, ZOClientConfig
from zofed.dtypes import torch_dtype
from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.zo import Scratch, mix_seed, perturb_, two_point
from zofed.zo.blocks import range_indices, to_ranges

if TYPE_CHECKING:  # annotations only: importing this module (the registry does) does not import torch
    import torch

# Fractions of the layers each client's memory can hold in full precision, cycled over clients: "mixed" is a phone / laptop / workstation spread, "constrained" small devices only.
DEVICE_PROFILES: dict[str, tuple[float, ...]] = {
    "uniform": (1.0,),
    "mixed": (0.15, 0.4, 1.0),
    "constrained": (0.1, 0.2, 0.3),
}


class MemoryProfile(BaseModel):
    """A client's memory model: V(a) = base_mb + Σ_l a_l·block_mb[l]; block_params sizes the proxy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_mb: float = Field(gt=0)
    block_mb: list[float] = Field(min_length=1)
    block_params: list[int] = Field(min_length=1)
    points: list[dict[str, float]] = Field(default_factory=list, description="measured (active_blocks, peak_mb)")
    source: str = "given"

    @model_validator(mode="after")
    def _one_entry_per_block(self) -> "MemoryProfile":
        if len(self.block_mb) != len(self.block_params):
            raise ValueError("block_mb and block_params need one entry per block")
        if min(self.block_mb) <= 0 or min(self.block_params) <= 0:
            raise ValueError("every block needs positive memory and parameters")
        return self


class ZorbaSettings(DownlinkSettings):
    mu: PositiveFloat = Field(1e-3, description="μ, the perturbation scale (MeZO's)")
    downlink: Downlink = Field("replay", description="block records since the client's version, or the weights")
    inactive_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    budgets_mb: list[float] | None = Field(None, description="one budget per client; else device_profile")
    device_profile: str = "mixed"
    eps: float = Field(0.05, ge=0)
    headroom: float = Field(0.02, ge=0, le=1, description="plan with base·(1 + headroom): run-to-run variation of peaks")
    resolve_every: int = Field(0, ge=0, description="R: re-solve every R rounds (0: solve once)")
    exact_limit: int = Field(2**16, ge=1, description="enumerate exactly while 2^(clients·blocks) <= this")
    memory_profile: MemoryProfile | None = Field(None, description="measured at start-up when not given")
    num_clients: int | None = Field(None, ge=1, description="filled from the run's clients")

    @property
    def replays_directions(self) -> bool:
        """The server rebuilds every client's block update from its seeds, and replays them to clients."""
        return True

    def for_population(self, clients: int) -> "ZorbaSettings":
        return self if self.num_clients == clients else type(self)(**{**self.model_dump(), "num_clients": clients})

    @model_validator(mode="after")
    def _known_profile(self) -> "ZorbaSettings":
        if self.budgets_mb is None and self.device_profile not in DEVICE_PROFILES:
            raise ValueError(f"unknown device_profile '{self.device_profile}'; use one of "
                             f"{', '.join(DEVICE_PROFILES)} or give budgets_mb")
        if self.budgets_mb is not None and self.num_clients is not None and len(self.budgets_mb) != self.num_clients:
            raise ValueError(f"budgets_mb has {len(self.budgets_mb)} entries for {self.num_clients} clients; "
                             "give one budget per client")
        return self


def client_budgets(settings: ZorbaSettings, profile: MemoryProfile, num_clients: int) -> list[float]:
    if settings.budgets_mb is not None:
        return list(settings.budgets_mb)
    fractions = DEVICE_PROFILES[settings.device_profile]
    blocks = len(profile.block_mb)
    largest = max(profile.block_mb)
    # a device holding fraction f of the layers fits that many of the largest blocks, one at least
    return [planned_base(settings, profile) + max(1, round(fractions[n % len(fractions)] * blocks)) * largest
            for n in range(num_clients)]


def planned_base(settings: ZorbaSettings, profile: MemoryProfile) -> float:
    return profile.base_mb * (1.0 + settings.headroom)


def plan(settings: ZorbaSettings, penalties: Sequence[float] | None = None) -> dict:
    """The assignment of blocks to clients with what it was decided on, as JSON for the server's info."""
    profile, num_clients = require_profile(settings), require_clients(settings)
    budgets = client_budgets(settings, profile, num_clients)
    sizes = np.asarray(profile.block_params, float)
    penalty = None if penalties is None else np.asarray(penalties, float)
    base = [planned_base(settings, profile)] * num_clients
    active = zorba_solver.solve(sizes, profile.block_mb, base, budgets,
                                eps=settings.eps, penalty=penalty, exact_limit=settings.exact_limit)
    memory = zorba_solver.memory(active, base, profile.block_mb)
    return {
        "active": [[int(layer) for layer in np.flatnonzero(row)] for row in active],
        "proxy": zorba_solver.proxy(active, sizes, penalty),
        "predicted_mb": [round(float(value), 1) for value in memory],
        "budgets_mb": [round(float(value), 1) for value in budgets],
        "uncovered": [int(layer) for layer in np.flatnonzero(~active.any(axis=0))],
    }


def require_profile(settings: ZorbaSettings) -> MemoryProfile:
    if settings.memory_profile is None:
        raise ZofedError("zorba needs a memory profile; run it through `zofed run` (which measures one at start-up) "
                         "or give zorba.memory_profile {base_mb, block_mb, block_params}")
    return settings.memory_profile


def require_clients(settings: ZorbaSettings) -> int:
    if settings.num_clients is None:
        raise ZofedError("zorba needs the number of clients; run it through a config (clients: N) or set zorba.num_clients")
    return settings.num_clients


class Zorba:
    def __init__(self, settings: ZorbaSettings) -> None:
        self.settings = settings

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        blocks = len(require_profile(self.settings).block_mb)
        decided = plan(self.settings)
        return initial_state(weights, {"seed": seed, "last_trained": [0] * blocks, "plans": [{"round": 1, **decided}]})

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        s = self.settings
        active = current_plan(state.info)["active"]
        config = {**s.client_config(state), "inactive_dtype": s.inactive_dtype}
        return [model_message(state, round, client, {**config, "active": active[client]}, s,
                              weights=client_precision(state.weights, active[client], torch_dtype(s.inactive_dtype)))
                for client in clients]

    def train(self, message: Message, env: ClientEnv) -> Message:
        config = message.config
        zo = ZOClientConfig.of(config, env.tensors[0].device)
        model = env.split
        if model is None or not hasattr(model, "lowered"):
            raise ZofedError("zorba needs a transformers model with a layer list (to lower inactive blocks); "
                             "use a decoder-only causal LM, or another algorithm")
        active = sorted(int(layer) for layer in config["active"])
        by_layer = {layer: [i for i, at in enumerate(model.tensor_layers) if at == layer] for layer in active}
        empty = [layer for layer, indices in by_layer.items() if not indices]
        if empty:
            raise ZofedError(f"zorba assigned layers {empty} but they hold no trainable tensors; "
                             "train every layer (LoRA on all layers, or trainable.mode=full without trainable.layers)")
        block = sorted(i for indices in by_layer.values() for i in indices)
        inactive = [layer for layer in range(model.num_layers) if layer not in by_layer]
        scratch = Scratch()
        seeds, grads, losses, skipped = [], [], [], 0
        with model.lowered(inactive, torch_dtype(str(config["inactive_dtype"]))):
            for step, batch in enumerate(env.batches):
                seed = mix_seed(env.seed, step)
                g, loss = two_point(env.tensors, partial(env.loss, batch), seed, zo.mu, zo.directions, scratch,
                                    zo.step_loss, estimator=zo.estimator, block=block)
                seeds.append(seed)  # every step is a record the server can count; a skipped one moves nothing
                if not math.isfinite(g):
                    skipped += 1
                    grads.append(0.0)
                    continue
                perturb_(env.tensors, seed, -zo.lr * g, zo.directions, scratch, block, rounding="stochastic")
                grads.append(g)
                losses.append(loss)
        metrics = {
            **zo_metrics(env, losses, skipped, estimator=zo.estimator),
            "active_blocks": float(len(active)),
            "active_params": float(sum(env.tensors[i].numel() for i in block)),
        }
        layers = {str(layer): to_ranges(indices) for layer, indices in by_layer.items()}
        return Message(kind="seeds", round=message.round, config={"lr": zo.lr, "layers": layers}, seeds=tuple(seeds),
                       scalars=tuple(grads), metrics=metrics)

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        reply = assigned_lr(sent, accept_common(sent, reply, "seeds"))
        mezo_step_seeds(sent, reply.seeds, reply.scalars)
        # the tensors a client may move are those of the layers the server assigned it, by the server's names
        owned = server_layers(list(state.weights), [int(layer) for layer in sent.message.config["active"]])
        claimed = reply.config.get("layers")
        if not isinstance(claimed, Mapping) or {str(k): v for k, v in claimed.items()} != {
                str(layer): to_ranges(indices) for layer, indices in owned.items()}:
            raise Rejected("the reply's layers are not the tensors of the layers the server assigned it")
        return replace(reply, config={**reply.config, "layers": {str(k): to_ranges(v) for k, v in owned.items()}})

    def aggregate(self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]) -> ServerState:
        s = self.settings
        # the layers as `accept` wrote them: the server's own placement of each assigned layer's tensors
        usable = [(reply, {int(layer): range_indices(ranges) for layer, ranges in reply.config["layers"].items()})
                  for _, reply in replies]
        weights = [1.0 if s.weighting == "uniform" else float(reply.metrics["num_examples"]) for reply, _ in usable]
        covering: dict[int, float] = {}
        for (_, layers), weight in zip(usable, weights):
            for layer in layers:
                covering[layer] = covering.get(layer, 0.0) + weight
        # one block record per (client, layer, step), float32 as the wire carries it; the server
        # applies exactly these, in this order, so a client replaying them holds the same weights
        records, blocks = [], []
        for (reply, layers), weight in zip(usable, weights):
            lr = float(reply.config["lr"])
            for layer, indices in layers.items():
                share = weight / covering[layer]
                coeffs = np.asarray([-share * lr * g for g in reply.scalars], dtype=np.float32).tolist()
                for seed, coeff in zip(reply.seeds, coeffs):
                    if coeff != 0.0:
                        records.append((int(seed), coeff))
                        blocks.append(indices)
        last_trained = [round if layer in covering else at for layer, at in enumerate(state.info["last_trained"])]
        info = {**state.info, "last_trained": last_trained}
        if s.resolve_every and round % s.resolve_every == 0:
            info = replan(s, info, round)
        return apply_round(state, round, records, [client for client, _ in replies], s, s.sampler, info, blocks)


def client_precision(weights: Mapping[str, torch.Tensor], active: Sequence[int], low: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights as the client will hold them: its inactive layers' tensors already in `low`."""
    kept = set(active)
    return {name: tensor if (layer := name_layer(name)) is None or layer in kept else tensor.to(low)
            for name, tensor in weights.items()}


def server_layers(names: Sequence[str], active: Sequence[int]) -> dict[int, list[int]]:
    """layer -> view indices of its trainable tensors, placed by name on the server (no client's word)."""
    return {layer: [i for i, name in enumerate(names) if name_layer(name) == layer] for layer in sorted(active)}


def replan(settings: ZorbaSettings, info: Mapping, round: int) -> dict:
    """Re-solve with each block's uncovered penalty grown by the rounds since it was last trained."""
    sizes = require_profile(settings).block_params
    base_penalty = float(sum(sizes))
    penalties = [base_penalty * (1 + round - at) for at in info["last_trained"]]
    decided = plan(settings, penalties)
    return {**info, "plans": [*info["plans"], {"round": round + 1, **decided}]}


def current_plan(info: Mapping) -> dict:
    """The plan in force: the newest of the plans decided so far (each from its `round` on)."""
    return info["plans"][-1]


def profile_points(num_layers: int) -> list[int]:
    """The active-layer counts the profile measures: 1, a quarter, half and all of the layers."""
    return sorted({1, max(1, num_layers // 4), max(1, num_layers // 2), num_layers})


def profile_probes(settings: ZorbaSettings, model: PrepareEnv) -> Iterator[Probe]:
    """Client 0's round with the first k layers active for each profile point, as `configure` sends
    it (weights, inactive layers in `inactive_dtype`); the client holds those layers low already."""
    layers = _profiled_layers(model)
    for active in profile_points(layers):
        # a state whose plan gives client 0 the first `active` layers: what round 1 would send it.
        # The message is yielded unnamed, so its low-precision copies go once the runtime encoded it.
        state = ServerState(weights=model.weights, info={"plans": [{"round": 1, "active": [list(range(active))]}]})
        yield Probe(Zorba(settings).configure(state, 1, [0])[0], lowered=tuple(range(active, layers)),
                    dtype=torch_dtype(settings.inactive_dtype))


def fit_profile(settings: ZorbaSettings, model: PrepareEnv, results: Sequence[ProbeResult]) -> MemoryProfile:
    """The memory model from the probes' peaks: base + m·k fitted by least squares; each layer's
    m_l is m scaled by its share of the layers' bytes, never below what moving its bytes to full
    precision costs (the floor matters on tiny models, where the peaks are interpreter noise);
    base is the upper envelope max_k(peak_k − Σ_{l<k} m_l), so the model never under-predicts a
    measured point."""
    _profiled_layers(model)
    low = torch_dtype(settings.inactive_dtype)
    block_params = _block_params(model)
    saved_bytes = [float(sum(tensor.numel() * (tensor.element_size() - low.itemsize)
                             for tensor in [*layer.parameters(), *layer.buffers()] if tensor.is_floating_point()))
                   for layer in model.split.layer_modules]
    points = [{"active_blocks": float(len(result.sent["active"])),
               "peak_mb": float(result.measured["peak_rss_mb"])} for result in results]
    ks = np.array([p["active_blocks"] for p in points])
    peaks = np.array([p["peak_mb"] for p in points])
    slope = float(np.polyfit(ks, peaks, 1)[0]) if len(points) > 1 else 0.0
    share = np.array(saved_bytes) / max(float(np.mean(saved_bytes)), 1.0)
    floor = np.array(saved_bytes) / 2**20
    block_mb = np.maximum(slope * share, floor)
    cumulative = np.concatenate([[0.0], np.cumsum(block_mb)])
    base = float(max(peak - cumulative[int(k)] for k, peak in zip(ks, peaks)))
    return MemoryProfile(
        # rounded up, so the rounding cannot make the model under-predict a measured point
        base_mb=math.ceil(base * 10) / 10,
        block_mb=[math.ceil(float(value) * 1000) / 1000 for value in block_mb],
        block_params=block_params,
        points=points,
        source=f"measured ({settings.inactive_dtype} inactive layers, batch {model.batch_size})",
    )


def _profiled_layers(model: PrepareEnv) -> int:
    if model.split is None or not hasattr(model.split, "lowered"):
        raise ZofedError("zorba needs a transformers model with a layer list to profile its memory; "
                         "use a decoder-only causal LM, or another algorithm")
    if min(_block_params(model)) == 0:
        raise ZofedError("every layer needs trainable tensors for a block profile; train all layers")
    return model.split.num_layers


def _block_params(model: PrepareEnv) -> list[int]:
    counts = [0] * model.split.num_layers
    for tensor, layer in zip(model.weights.values(), model.split.tensor_layers):
        if 0 <= layer < len(counts):
            counts[layer] += tensor.numel()
    return counts


# Before round 1, unless the config gives one: the client memory model the plan is solved on.
PROFILE = Preparation(fills="memory_profile", needed=lambda settings: settings.memory_profile is None,
                      probes=profile_probes, fit=fit_profile)

ENTRY = AlgorithmEntry(
    name="zorba",
    description="ZorBA: each client trains the blocks its memory budget allows, the rest frozen in bf16 (Meng et al., 2026)",
    settings=ZorbaSettings,
    build=Zorba,
    basis="abstract only: blocks under memory budgets, seed upload; ours: memory model, proxy, solver, "
    "block-record downlink",
    prepare=(PROFILE,),
    differs=("no official code is public: beyond the abstract everything is ours, lr 1e-3 and μ 1e-3 included",),
)
