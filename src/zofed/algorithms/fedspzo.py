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
Layer-forwards count transformer layers only: every pass but the cache pass also runs the final
norm and the head, which for a small model with a large vocabulary (SmolLM2: 49k x 576) costs as
much as several layers; wall time captures it, layer_forwards does not.
A step whose estimates include a non-finite loss is skipped (every estimate restores θ, so θ is
unchanged) and still costs its full layer-forwards.

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
from functools import partial
from typing import Literal

import torch
from pydantic import Field, model_validator

from zofed.algorithms.base import (
    AlgorithmEntry,
    ClientEnv,
    client_directions,
    directions_config,
    Rejected,
    Sent,
    ServerState,
    Settings,
    SplitForward,
    accept_common,
    name_layer,
    register,
    step_records,
    steps_to_check,
    zo_metrics,
)
from zofed.algorithms.weighting import WEIGHTING_HELP, Weighting, client_shares
from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.zo import DEFAULT_POOL_SIZE, STEP_LOSS_HELP, Scratch, StepLoss, make_directions, mix_seed
from zofed.zo.blocks import block_estimate, from_ranges, perturb_block_, to_ranges

BLOCK_1, BLOCK_2 = 1, 2


class FedSPZOSettings(Settings):
    lr: float = Field(1e-3, gt=0)
    mu: float = Field(1e-2, gt=0)
    split_layer: int | None = Field(None, ge=1, description="s: block 2 is layers >= s; default L // 2")
    p1: int = Field(1, ge=1, le=64, description="P1: directions of block 1 per step (whole-network passes)")
    p2: int = Field(4, ge=2, le=256, description="P2: directions of block 2 per step (passes from the cache)")
    directions: Literal["gaussian", "pool"] = "gaussian"
    pool_size: int = Field(DEFAULT_POOL_SIZE, ge=1024)
    weighting: Weighting = Field("examples", description=WEIGHTING_HELP)
    step_loss: StepLoss = Field("plus", description=STEP_LOSS_HELP)

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


def layer_forwards_per_step(num_layers: int, split: int, p1: int, p2: int) -> int:
    return split + 2 * p2 * (num_layers - split) + 2 * p1 * num_layers


class FedSPZO:
    def __init__(self, settings: FedSPZOSettings) -> None:
        self.settings = settings

    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        return ServerState(weights={name: tensor.detach().clone() for name, tensor in weights.items()},
                           info={"seed": seed})

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        s = self.settings
        config = {"lr": s.lr, "mu": s.mu, "split_layer": s.split_layer, "p1": s.p1, "p2": s.p2,
                  **directions_config(s, state), "step_loss": s.step_loss}
        return [Message(kind="weights", round=round, config=config, tensors=state.weights) for _ in clients]

    def train(self, message: Message, env: ClientEnv) -> Message:
        config = dict(message.config)
        lr, mu, p1, p2 = float(config["lr"]), float(config["mu"]), int(config["p1"]), int(config["p2"])
        model = require_split(env.split)
        split = model.num_layers // 2 if config["split_layer"] is None else int(config["split_layer"])
        if not 1 <= split <= model.num_layers:
            raise ZofedError(f"split_layer {split} is outside 1..{model.num_layers} for this "
                             f"{model.num_layers}-layer model; set fedspzo.split_layer in that range")
        block1, block2 = split_blocks(model.tensor_layers, split)
        directions = client_directions(config, env.tensors[0].device)
        scratch = Scratch()
        seeds, grads, losses, skipped = [], [], [], 0
        for step, batch in enumerate(env.batches):
            cache = model.prefix(batch, split)  # block 1's output at the step's θ, reused by every block-2 pass
            plan = [(BLOCK_2, p, block2, partial(model.suffix_loss, cache)) for p in range(p2)]
            plan += [(BLOCK_1, p, block1, partial(env.loss, batch)) for p in range(p1)]
            estimates = []
            for block, p, indices, loss_at in plan:
                seed = step_seed(env.seed, step, block, p)
                estimates.append((seed, *block_estimate(env.tensors, indices, loss_at, seed, mu, directions, scratch,
                                                        str(config["step_loss"]))))
            del cache
            if any(not math.isfinite(g) for _, g, _ in estimates):
                skipped += 1
                continue
            for (block, _, indices, _), (seed, g, _) in zip(plan, estimates):
                perturb_block_(env.tensors, indices, seed, -lr / (p2 if block == BLOCK_2 else p1) * g, directions,
                               scratch)
            seeds.extend(seed for seed, _, _ in estimates)
            grads.extend(g for _, g, _ in estimates)
            losses.append(sum(loss for _, _, loss in estimates) / len(estimates))
        steps = len(losses) + skipped
        metrics = {
            **zo_metrics(env, losses, skipped),
            "forward_passes": float(steps * (1 + 2 * p2 + 2 * p1)),
            "layer_forwards": float(steps * layer_forwards_per_step(model.num_layers, split, p1, p2)),
            "split_layer": float(split),
        }
        blocks = {"1": to_ranges(block1), "2": to_ranges(block2)}
        return Message(kind="seeds", round=message.round, config={"blocks": blocks}, seeds=tuple(seeds),
                       scalars=tuple(grads), metrics=metrics)

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        reply = accept_common(sent, reply, "seeds")
        s = self.settings
        width = s.p1 + s.p2
        # a step's records: block 2's P2 directions, then block 1's P1, as the client lays them out
        expected = [tuple(step_seed(sent.seed, step, block, p) for block, count in ((BLOCK_2, s.p2), (BLOCK_1, s.p1))
                          for p in range(count)) for step in range(steps_to_check(sent, len(reply.seeds), width))]
        step_records(reply.seeds, expected, sent)
        blocks = reply_blocks(reply, len(state.weights), s)
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
        return reply

    def aggregate(self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]) -> ServerState:
        s = self.settings
        count = len(state.weights)
        usable = [(client, reply, blocks) for client, reply in replies
                  if (blocks := reply_blocks(reply, count, s)) is not None]
        if not usable:
            return state
        shares = client_shares([(client, reply) for client, reply, _ in usable], s.weighting)
        weights = [tensor.clone() for tensor in state.weights.values()]
        directions, scratch = make_directions(s.directions, s.pool_size), Scratch()
        for (_, reply, (block1, block2)), share in zip(usable, shares):
            # Σ_k w_k·(θ + Δ_k) / Σ w_k = θ + Σ_k (w_k/Σw)·Δ_k: each client's records, scaled, in its own order
            for j, (seed, g) in enumerate(zip(reply.seeds, reply.scalars)):
                in_block_2 = j % (s.p1 + s.p2) < s.p2
                indices, p = (block2, s.p2) if in_block_2 else (block1, s.p1)
                perturb_block_(weights, indices, seed, -(share * s.lr) / p * g, directions, scratch)
        return ServerState(weights=dict(zip(state.weights, weights)), buffers=state.buffers, info=state.info)


def require_split(split: SplitForward | None) -> SplitForward:
    if split is None:
        raise ZofedError("fedspzo needs a model it can run in two parts (a split forward); "
                         "use a decoder-only transformers model, or another algorithm")
    return split


def reply_blocks(reply: Message, count: int, settings: FedSPZOSettings) -> tuple[list[int], list[int]] | None:
    """The reply's (block 1, block 2) tensor indices, or None for a malformed reply (never applied)."""
    blocks = reply.config.get("blocks")
    if not isinstance(blocks, Mapping) or len(reply.seeds) != len(reply.scalars):
        return None
    if len(reply.seeds) % (settings.p1 + settings.p2) != 0:
        return None
    block1, block2 = from_ranges(blocks.get("1", []), count), from_ranges(blocks.get("2", []), count)
    if block1 is None or block2 is None or set(block1) & set(block2):
        return None
    return block1, block2


register(AlgorithmEntry(
    name="fedspzo",
    description="FedSPZO: split the network in two blocks, more perturbations for the cheap upper one (Ahmed et al., 2025)",
    settings=FedSPZOSettings,
    build=FedSPZO,
    basis="abstract only: two blocks, more perturbations for block 2; ours: split, P1/P2, weighting; "
    "its task-alignment loss is not implemented",
))
