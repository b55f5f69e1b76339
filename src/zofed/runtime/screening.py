"""What the server does with replies before aggregating them: reject the malformed, blunt the hostile.

Every runtime calls `screen_replies` between receiving a round's replies and `aggregate`.

Rejected (counted, never applied): a reply of a kind a client does not send (`replay`,
`control`); tensors whose names, shapes or dtypes differ from the global model's, or that hold
NaN/inf; non-finite scalars; seeds out of [0, 2^63) or not one per scalar in a `seeds` reply;
a missing or non-positive `num_examples`.

Robust aggregation (`robust:` in the config), applied to the accepted replies:
  clip_scalar     each uploaded scalar clipped to [−c, c] (a ZO g is a directional derivative:
                  a huge one is an attack or a blown-up loss, never information)
  norm_bound      a reply whose update norm exceeds the bound is scaled down to it: ‖g‖₂ of its
                  scalars, or ‖w − w_global‖ of its weights
  aggregator      mean (the method's own aggregation), median or trimmed-mean: coordinate-wise
                  over the clients' weights, or over their scalar vectors when every client
                  uploads scalars on shared coordinates (fedkseed's K seeds, DeComFL's server
                  seeds). The method still aggregates: every reply is replaced by the robust
                  centre, so its sample-weighted mean is that centre. FedMeZO's `upload: seeds`
                  has no shared coordinates (each client its own seeds) and supports clipping
                  and norm bounds only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.zo.seeds import SEED_LIMIT

CLIENT_KINDS = ("weights", "delta", "seeds")


class RobustConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    clip_scalar: float | None = Field(None, gt=0, description="clip every uploaded scalar to [-c, c]")
    norm_bound: float | None = Field(None, gt=0, description="scale down replies whose update norm exceeds this")
    aggregator: Literal["mean", "median", "trimmed-mean"] = "mean"
    trim_fraction: float = Field(0.2, ge=0, lt=0.5, description="trimmed-mean: share cut at each end")


@dataclass(frozen=True)
class Screened:
    replies: list[tuple[int, Message]]
    rejected: dict[int, str]  # client -> why


def reply_problem(reply: Message, weights: Mapping[str, torch.Tensor]) -> str | None:
    """Why a reply must not be applied, or None when it is well formed."""
    if reply.kind not in CLIENT_KINDS:
        return f"a client does not send '{reply.kind}' messages"
    if reply.tensors:
        if set(reply.tensors) != set(weights):
            return "tensor names differ from the model's"
        for name, tensor in reply.tensors.items():
            if tensor.shape != weights[name].shape or tensor.dtype != weights[name].dtype:
                return f"tensor '{name}' has shape {tuple(tensor.shape)} {tensor.dtype}, expected {tuple(weights[name].shape)} {weights[name].dtype}"
            if not bool(torch.isfinite(tensor).all()):
                return f"tensor '{name}' holds NaN or inf"
    elif reply.kind in ("weights", "delta"):
        return f"a '{reply.kind}' reply without tensors"
    if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in reply.scalars):
        return "a scalar is NaN, inf or not a number"
    if not all(isinstance(seed, int) and 0 <= seed < SEED_LIMIT for seed in reply.seeds):
        return "a seed is outside [0, 2^63)"
    if reply.kind == "seeds" and reply.seeds and len(reply.seeds) != len(reply.scalars):
        return f"{len(reply.seeds)} seeds for {len(reply.scalars)} scalars"
    examples = reply.metrics.get("num_examples")
    if not isinstance(examples, (int, float)) or not math.isfinite(examples) or examples <= 0:
        return "num_examples missing or not positive"
    return None


def screen_replies(
    replies: Sequence[tuple[int, Message]], weights: Mapping[str, torch.Tensor], robust: RobustConfig
) -> Screened:
    accepted, rejected = [], {}
    for client, reply in replies:
        problem = reply_problem(reply, weights)
        if problem is None:
            accepted.append((client, reply))
        else:
            rejected[client] = problem
    accepted = [(client, bound_reply(reply, weights, robust)) for client, reply in accepted]
    if robust.aggregator != "mean" and accepted:
        accepted = robust_centre(accepted, weights, robust)
    return Screened(accepted, rejected)


def bound_reply(reply: Message, weights: Mapping[str, torch.Tensor], robust: RobustConfig) -> Message:
    scalars = np.asarray(reply.scalars, dtype=np.float64)
    if robust.clip_scalar is not None and scalars.size:
        scalars = np.clip(scalars, -robust.clip_scalar, robust.clip_scalar)
    tensors = dict(reply.tensors)
    if robust.norm_bound is not None:
        if scalars.size:
            norm = float(np.linalg.norm(scalars))
            if norm > robust.norm_bound:
                scalars = scalars * (robust.norm_bound / norm)
        if tensors:
            # a weights reply's update is measured from the global model; a delta reply is the update
            base = {name: weights[name].float() if reply.kind == "weights" else 0.0 for name in tensors}
            deltas = {name: tensor.float() - base[name] for name, tensor in tensors.items()}
            norm = math.sqrt(sum(float(delta.pow(2).sum()) for delta in deltas.values()))
            if norm > robust.norm_bound:
                factor = robust.norm_bound / norm
                tensors = {name: (base[name] + deltas[name] * factor).to(tensors[name].dtype) for name in tensors}
    return replace(reply, scalars=tuple(float(s) for s in scalars), tensors=tensors)


def robust_centre(
    replies: list[tuple[int, Message]], weights: Mapping[str, torch.Tensor], robust: RobustConfig
) -> list[tuple[int, Message]]:
    """Every reply replaced by the coordinate-wise median / trimmed mean of all of them."""
    if all(reply.tensors for _, reply in replies):
        centre = {name: _centre(torch.stack([reply.tensors[name].float() for _, reply in replies]), robust)
                  .to(weights[name].dtype) for name in replies[0][1].tensors}
        return [(client, replace(reply, tensors=centre)) for client, reply in replies]
    seed_lists = {tuple(reply.seeds) for _, reply in replies}
    lengths = {len(reply.scalars) for _, reply in replies}
    if len(lengths) == 1 and (seed_lists == {()} or len(seed_lists) == 1):
        stacked = torch.tensor([reply.scalars for _, reply in replies], dtype=torch.float64)
        centre = tuple(float(v) for v in _centre(stacked, robust))
        return [(client, replace(reply, scalars=centre)) for client, reply in replies]
    raise ZofedError(
        f"robust.aggregator={robust.aggregator} needs replies on shared coordinates (weights, or scalars on shared "
        "seeds as in fedkseed and decomfl); with per-client seeds use robust.clip_scalar or robust.norm_bound"
    )


def _centre(stacked: torch.Tensor, robust: RobustConfig) -> torch.Tensor:
    count = stacked.shape[0]
    ordered = stacked.sort(dim=0).values
    if robust.aggregator == "median":
        return ordered[count // 2] if count % 2 else 0.5 * (ordered[count // 2 - 1] + ordered[count // 2])
    cut = int(math.floor(robust.trim_fraction * count))
    return ordered[cut : count - cut].mean(dim=0)
