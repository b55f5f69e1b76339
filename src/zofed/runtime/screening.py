"""What the server does with replies before aggregating them: reject the malformed, blunt the hostile.

The one round body (runtime/round.py) calls `screen` between decoding a round's replies and
`aggregate`, in every runtime.

Rejected (counted, never applied), generic: a reply of a kind a client does not send (`replay`,
`control`); tensors whose names, shapes or dtypes differ from the global model's, or that hold
NaN/inf; non-finite scalars; seeds out of [0, 2^63) or not one per scalar in a `seeds` reply;
metrics that are not a small mapping of names to numbers with a positive `num_examples`; a
config that is not a mapping of plain JSON under MAX_CONFIG_BYTES. Then the method's `accept`
checks what only it knows against what the server itself sent (see algorithms/base.py `Sent`).

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

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from zofed.algorithms import Algorithm, Rejected, Sent, ServerState
from zofed.config import RobustConfig
from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.zo.seeds import SEED_LIMIT

CLIENT_KINDS = ("weights", "delta", "seeds")
# Every client's metrics carry these (the round row sums them); a few more are method-specific.
REQUIRED_METRICS = ("num_examples", "train_loss", "forward_passes", "skipped_steps")
MAX_METRICS = 64  # keys of a reply's metrics: what a method reports is a handful
MAX_CONFIG_BYTES = 1 << 18  # a reply's config as JSON (GAM-LPP: two values per trainable tensor)


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
    problem = metrics_problem(reply.metrics) or config_problem(reply.config)
    if problem is not None:
        return problem
    if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in reply.scalars):
        return "a scalar is NaN, inf or not a number"
    if not all(isinstance(seed, int) and 0 <= seed < SEED_LIMIT for seed in reply.seeds):
        return "a seed is outside [0, 2^63)"
    if reply.kind == "seeds" and reply.seeds and len(reply.seeds) != len(reply.scalars):
        return f"{len(reply.seeds)} seeds for {len(reply.scalars)} scalars"
    examples = reply.metrics["num_examples"]
    if not math.isfinite(examples) or examples <= 0:
        return "num_examples missing or not positive"
    if not all(math.isfinite(reply.metrics[key]) and reply.metrics[key] >= 0 for key in ("forward_passes", "skipped_steps")):
        return "forward_passes or skipped_steps negative or not finite"
    return None


def metrics_problem(metrics) -> str | None:
    """Why a reply's metrics cannot go into the round row: the type, size and values are the client's word."""
    if not isinstance(metrics, Mapping):
        return f"metrics are a {type(metrics).__name__}, not a mapping"
    if len(metrics) > MAX_METRICS:
        return f"{len(metrics)} metrics, more than {MAX_METRICS}"
    for key, value in metrics.items():
        if not isinstance(key, str) or len(key) > 64:
            return "a metric name that is not a short string"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"metric '{key}' is not a number"
    missing = [key for key in REQUIRED_METRICS if key not in metrics]
    if missing:
        return f"metrics lack {', '.join(missing)}"
    return None


def config_problem(config) -> str | None:
    if not isinstance(config, Mapping):
        return f"config is a {type(config).__name__}, not a mapping"
    try:
        size = len(json.dumps(config, allow_nan=True))
    except (TypeError, ValueError, RecursionError):
        return "config is not plain JSON"
    if size > MAX_CONFIG_BYTES:
        return f"config of {size} bytes, more than {MAX_CONFIG_BYTES}"
    return None


def screen(
    replies: Sequence[tuple[int, Message]],
    sent: Mapping[int, Sent],
    state: ServerState,
    algorithm: Algorithm,
    robust: RobustConfig,
) -> Screened:
    """Generic checks, then the method's own (`accept`: the server's lr, counts, seeds, layers, scales),
    then the robust options over what was accepted. A reply either passes whole or is rejected with a reason."""
    accepted, rejected = [], {}
    for client, reply in replies:
        try:
            problem = reply_problem(reply, state.weights)
            if problem is not None:
                raise Rejected(problem)
            reply = node_examples(reply, sent[client], robust)
            accepted.append((client, algorithm.accept(state, sent[client], reply)))
        except Rejected as why:
            rejected[client] = str(why)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
            # a field of the wrong type deep in a method's config: malformed, whatever the field
            rejected[client] = f"malformed reply ({type(error).__name__}: {str(error)[:200]})"
    accepted = [(client, bound_reply(reply, state.weights, robust)) for client, reply in accepted]
    if robust.aggregator != "mean" and accepted:
        accepted = robust_centre(accepted, state.weights, robust)
    return Screened(accepted, rejected)


def node_examples(reply: Message, sent: Sent, robust: RobustConfig) -> Message:
    """Where nodes own their data the server cannot count it: equal weights, or the claim capped (robust.node_examples)."""
    if sent.examples is not None:
        return reply
    claimed = float(reply.metrics["num_examples"])
    weight = 1.0 if robust.node_examples == "equal" else min(claimed, float(robust.max_node_examples))
    return replace(reply, metrics={**reply.metrics, "num_examples": weight})


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
