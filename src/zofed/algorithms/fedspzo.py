"""FedSPZO (Ahmed, Pfeiffer, Khalili et al., arXiv 2502.10239): split-perturbation ZO, seeds up.

The network is split at layer s into block 1 (embeddings + layers < s) and block 2 (layers >= s,
final norm, head). A local step on a batch:

  1. runs block 1 once, unperturbed, and caches its output (s layer-forwards);
  2. takes P2 two-point estimates along directions of block 2's tensors only, each running only
     block 2 from the cache (2·P2·(L−s) layer-forwards);
  3. takes P1 (< P2) two-point estimates along directions of block 1's tensors only, each
     running the whole network (2·P1·L layer-forwards);
  4. updates each block with its own averaged estimate: θ_b −= lr/P_b · Σ_p g_p·z_p.

Cost per step in layer-forwards: s + 2·P2·(L−s) + 2·P1·L (MeZO with P directions: 2·P·L),
reported exactly as the `layer_forwards` metric; `forward_passes` counts model invocations
(1 + 2·P2 + 2·P1 per step, the cache pass and the suffix passes included although partial).
With `estimator: forward` every direction takes one pass instead of two and the step's L(θ) is
one suffix pass from the cache, shared by both blocks' estimates (the suffix from the cache gives
the full loss exactly while block 1 is unperturbed): s + (1 + P2)·(L−s) + P1·L layer-forwards,
2 + P2 + P1 invocations.
Layer-forwards count transformer layers only: every pass but the cache pass also runs the final
norm and the head, which for a small model with a large vocabulary (SmolLM2: 49k x 576) costs as
much as several layers; wall time captures it, layer_forwards does not.
A step whose estimates include a non-finite loss is skipped (every estimate restores θ, so θ is
unchanged), still costs its full layer-forwards and still uploads its P2 + P1 records, each with
g = 0.0, so the server sees every step it assigned.

Upload: seeds + scalars. Seeds are derived per (client seed, step, block, perturbation); the
records of a step come block 2 first (P2 of them), then block 1 (P1): that fixed layout, with
P1 and P2 from the settings, tags every record with its block at no cost on the wire. The reply
also names each block's tensors (as index ranges of the trainable view, usually one range each)
since only the client knows where its model's layers are. The server rebuilds each client's
update by replaying the records on the named block (directions of tensor i for the full view's
index i, so a seed names the same direction on both sides) and averages the clients, weighted by
their example counts (`weighting: examples`, our choice: the abstract is silent, and FedAvg's
weighting keeps FedSPZO comparable with the FedAvg-style baselines; `uniform` is an option).

Our choices where the paper's abstract is silent (all configurable):
  - `split_layer` default L // 2 (resolved by the client, which knows L): block 2 then holds half
    the layers' trainable tensors at half the cost per direction, so its P2 directions cost as
    much as P2/2 full directions.
  - `p1` = 1, `p2` = 4: block 1 keeps MeZO's one direction per step (2·L layer-forwards), block 2
    gets a 4× lower-variance estimate for 2·4·(L/2) = 4·L; a step costs 6.5·L at s = L/2, about
    3.25 MeZO steps. p1 must stay below p2 (the method's premise).
  - Estimates of both blocks are taken at the same θ (the step's start) and applied together;
    block 2's update is applied first, as the records are laid out.
  - One lr and one mu for both blocks, as in MeZO; the block averages make the expected update
    lr·∇L per block, the same scale as MeZO.
  - Tensors outside the layers: the input side (embeddings, a head tied to them) is block 1, the
    output side (final norm, an untied head) block 2; with LoRA (the default) every trainable
    tensor sits in a layer.
  - Downlink: the weights. A replay downlink would need block-restricted records on the client
    too; the plain (seed, coeff) replay applies to every tensor, so it is not offered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from zofed.algorithms.base import (
    AlgorithmEntry,
    ClientEnv,
    Rejected,
    Sent,
    ServerState,
    SplitForward,
    accept_common,
    initial_state,
    name_layer,
    step_records,
    zo_metrics,
)
from zofed.algorithms.settings import ZOClientConfig, ZOSettings
from zofed.algorithms.weighting import client_shares
from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.zo import Estimator, Scratch, forward_passes, mix_seed, perturb_, replay_, two_point
from zofed.zo.blocks import from_ranges, range_indices, to_ranges

if TYPE_CHECKING:  # annotations only: importing this module (the registry does) does not import torch
    import torch

BLOCK_1, BLOCK_2 = 1, 2


class FedSPZOSettings(ZOSettings):
    split_layer: int | None = Field(None, ge=1, description="s: block 2 is layers >= s; default L // 2")
    p1: int = Field(1, ge=1, le=64, description="P1: directions of block 1 per step (whole-network passes)")
    p2: int = Field(4, ge=2, le=256, description="P2: directions of block 2 per step (passes from the cache)")

    @property
    def scalars_per_step(self) -> int:
        return self.p1 + self.p2

    @property
    def replays_directions(self) -> bool:
        """The server rebuilds every client's update from its seeds."""
        return True

    @model_validator(mode="after")
    def _fewer_block_1_directions(self) -> "FedSPZOSettings":
        if self.p1 >= self.p2:
            raise ValueError(f"p1 ({self.p1}) must be below p2 ({self.p2}): block 1's passes are the costly ones")
        return self


def step_seed(client_seed: int, step: int, block: int, perturbation: int) -> int:
    return mix_seed(client_seed, step, block, perturbation)


def split_blocks(tensor_layers: Sequence[int], split: int) -> tuple[list[int], list[int]]:
    """(block 1, block 2) tensor indices: block 2 is every tensor at layer >= split, head side included."""
    block1 = [i for i, layer in enumerate(tensor_layers) if layer < split]
    block2 = [i for i, layer in enumerate(tensor_layers) if layer >= split]
    for name, block in (("block 1 (below the split)", block1), ("block 2 (from the split up)", block2)):
        if not block:
            raise ZofedError(
                f"split layer {split} leaves {name} with no trainable tensors; pick a split_layer with trainable "
                "tensors on both sides (LoRA on every layer, or trainable.layers spanning the split)"
            )
    return block1, block2


def layer_forwards_per_step(num_layers: int, split: int, p1: int, p2: int, estimator: Estimator = "central") -> int:
    if estimator == "forward":  # one pass per direction, and L(θ) once from the cache
        return split + (1 + p2) * (num_layers - split) + p1 * num_layers
    return split + 2 * p2 * (num_layers - split) + 2 * p1 * num_layers


class FedSPZO:
    def __init__(self, settings: FedSPZOSettings) -> None:
        self.settings = settings

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        return initial_state(weights, {"seed": seed})

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        s = self.settings
        config = {**s.client_config(state), "split_layer": s.split_layer, "p1": s.p1, "p2": s.p2}
        return [Message(kind="weights", round=round, config=config, tensors=state.weights) for _ in clients]

    def train(self, message: Message, env: ClientEnv) -> Message:
        config = message.config
        zo = ZOClientConfig.of(config, env.tensors[0].device)
        p1, p2 = int(config["p1"]), int(config["p2"])
        model = require_split(env.split)
        split = model.num_layers // 2 if config["split_layer"] is None else int(config["split_layer"])
        if not 1 <= split <= model.num_layers:
            raise ZofedError(f"split_layer {split} is outside 1..{model.num_layers} for this "
                             f"{model.num_layers}-layer model; set fedspzo.split_layer in that range")
        block1, block2 = split_blocks(model.tensor_layers, split)
        scratch = Scratch()
        seeds, grads, losses, skipped = [], [], [], 0
        for step, batch in enumerate(env.batches):
            cache = model.prefix(batch, split)  # block 1's output at the step's θ, reused by every block-2 pass
            base_loss = model.suffix_loss(cache) if zo.estimator == "forward" else None
            plan = [(BLOCK_2, p, block2, partial(model.suffix_loss, cache)) for p in range(p2)]
            plan += [(BLOCK_1, p, block1, partial(env.loss, batch)) for p in range(p1)]
            estimates = []
            for block, p, indices, loss_at in plan:
                seed = step_seed(env.seed, step, block, p)
                estimates.append((seed, *two_point(env.tensors, loss_at, seed, zo.mu, zo.directions, scratch,
                                                   zo.step_loss, estimator=zo.estimator, base_loss=base_loss,
                                                   block=indices)))
            del cache
            seeds.extend(seed for seed, _, _ in estimates)
            if any(not math.isfinite(g) for _, g, _ in estimates):
                skipped += 1
                grads.extend([0.0] * len(estimates))  # the step's records, moving nothing
                continue
            for (block, _, indices, _), (seed, g, _) in zip(plan, estimates):
                perturb_(env.tensors, seed, -zo.lr / (p2 if block == BLOCK_2 else p1) * g, zo.directions, scratch,
                         indices, rounding="stochastic")
            grads.extend(g for _, g, _ in estimates)
            losses.append(sum(loss for _, _, loss in estimates) / len(estimates))
        steps = len(losses) + skipped
        metrics = {
            **zo_metrics(env, losses, skipped),
            "forward_passes": float(steps * (1 + forward_passes(zo.estimator, p2 + p1))),
            "layer_forwards": float(steps * layer_forwards_per_step(model.num_layers, split, p1, p2, zo.estimator)),
            "split_layer": float(split),
        }
        blocks = {"1": to_ranges(block1), "2": to_ranges(block2)}
        return Message(kind="seeds", round=message.round, config={"blocks": blocks}, seeds=tuple(seeds),
                       scalars=tuple(grads), metrics=metrics)

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        reply = accept_common(sent, reply, "seeds")
        s = self.settings
        width = s.p1 + s.p2
        steps = sent.steps if sent.steps is not None else len(reply.seeds) // width
        # a step's records: block 2's P2 directions, then block 1's P1, as the client lays them out
        expected = [tuple(step_seed(sent.seed, step, block, p) for block, count in ((BLOCK_2, s.p2), (BLOCK_1, s.p1))
                          for p in range(count)) for step in range(steps)]
        step_records(reply.seeds, reply.scalars, expected, sent)
        blocks = reply_blocks(reply, len(state.weights))
        if blocks is None:
            raise Rejected("the reply's blocks are not two disjoint index ranges of the trainable view")
        block1, block2 = blocks
        if sorted(block1 + block2) != list(range(len(state.weights))):
            raise Rejected("the reply's blocks do not cover every trainable tensor once")
        # the split is one layer: every layer the server can place by name lies on one side of it
        names = list(state.weights)
        low, high = [name_layer(names[i]) for i in block1], [name_layer(names[i]) for i in block2]
        below, above = [layer for layer in low if layer is not None], [layer for layer in high if layer is not None]
        if below and above and max(below) >= min(above):
            raise Rejected("block 1 holds a layer at or above one of block 2's")
        return replace(reply, config={**reply.config, "blocks": {"1": to_ranges(block1), "2": to_ranges(block2)}})

    def aggregate(self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]) -> ServerState:
        s = self.settings
        if not replies:
            return state
        shares = client_shares(replies, s.weighting)
        # Σ_k w_k·(θ + Δ_k) / Σ w_k = θ + Σ_k (w_k/Σw)·Δ_k: each client's records, scaled, in its own order
        records, blocks = [], []
        for (_, reply), share in zip(replies, shares):
            block1, block2 = (range_indices(reply.config["blocks"][key]) for key in ("1", "2"))
            for j, (seed, g) in enumerate(zip(reply.seeds, reply.scalars)):
                in_block_2 = j % (s.p1 + s.p2) < s.p2
                indices, p = (block2, s.p2) if in_block_2 else (block1, s.p1)
                records.append((seed, -(share * s.lr) / p * g))
                blocks.append(indices)
        weights = [tensor.clone() for tensor in state.weights.values()]
        replay_(weights, records, s.sampler, Scratch(), blocks)
        return ServerState(weights=dict(zip(state.weights, weights)), buffers=state.buffers, info=state.info)


def require_split(split: SplitForward | None) -> SplitForward:
    if split is None:
        raise ZofedError("fedspzo needs a model it can run in two parts (a split forward); "
                         "use a decoder-only transformers model, or another algorithm")
    return split


def reply_blocks(reply: Message, count: int) -> tuple[list[int], list[int]] | None:
    """A reply's (block 1, block 2) tensor indices, or None when they are not two disjoint sets of ranges in the view."""
    blocks = reply.config.get("blocks")
    if not isinstance(blocks, Mapping):
        return None
    try:
        block1, block2 = from_ranges(blocks.get("1", []), count), from_ranges(blocks.get("2", []), count)
    except (TypeError, ValueError):
        return None
    if block1 is None or block2 is None or set(block1) & set(block2):
        return None
    return block1, block2


ENTRY = AlgorithmEntry(
    name="fedspzo",
    description="FedSPZO: split the network in two blocks, more perturbations for the cheap upper one (Ahmed et al., 2025)",
    settings=FedSPZOSettings,
    build=FedSPZO,
    basis="abstract only: two blocks, more perturbations for block 2; ours: split, P1/P2, weighting; "
    "its task-alignment loss is not implemented",
    differs=("no official code is public: beyond the abstract everything is ours, lr 1e-3 and μ 1e-2 included",),
)
