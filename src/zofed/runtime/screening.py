"""What the server does with replies before aggregating them: reject the malformed, bound the hostile.

The one round body (runtime/round.py) calls `screen` between decoding a round's replies and
`aggregate`, in every runtime. docs/reliability.md's trust model is the user's view of this module.

Rejected (counted, never applied), generic: a reply of a kind a client does not send (`replay`,
`control`); tensors whose names, shapes or dtypes differ from the global model's, or that hold
NaN, inf or values beyond TENSOR_BOUND; scalars that are not finite numbers within SCALAR_BOUND;
seeds out of [0, 2^63) or not one per scalar in a `seeds` reply; metrics that are not a small
mapping of names to finite numbers within METRIC_BOUND, with counts within what the server
assigned and no name of the round row's own fields; a client's own measurements (seconds, peak
memory) out of range; a config that is not a mapping of plain JSON under MAX_CONFIG_BYTES. Then
the method's `accept` checks what only it knows against what the server itself sent (see
algorithms/base.py `Sent`). Whatever a reply holds, `screen` returns: every error it can cause
is a rejection, with a reason cut to MAX_REASON characters.

Bounded, applied to the accepted replies:
  clip_scalar     (robust:) each uploaded scalar clipped to [−c, c] (a ZO g is a directional
                  derivative: a huge one is an attack or a blown-up loss, never information)
  norm_bound      (robust:) a reply whose update norm exceeds the bound is scaled down to it:
                  ‖g‖₂ of its scalars, or ‖w − w_global‖ of its weights
  default_bound   on unless `robust.default_bound: off`: a reply's scalar RMS or update norm at
                  most that factor (10) times the round's median (`default_bound`)
  aggregator      (robust:) mean (the method's own aggregation), median or trimmed-mean:
                  coordinate-wise over the clients' weights, or over their scalar vectors when every
                  client uploads scalars on shared coordinates (fedkseed's K seeds, DeComFL's server
                  seeds). The method still aggregates: every reply is replaced by the robust
                  centre, so its sample-weighted mean is that centre. FedMeZO's `upload: seeds`
                  has no shared coordinates (each client its own seeds) and supports clipping
                  and norm bounds only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

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
MAX_REASON = 200  # characters of a rejection reason kept in the round row (the rest is the client's input)

# Bounds on what a reply carries, far above anything honest, so every number the server keeps is finite
# and every sum of them too. A ZO scalar is a directional derivative, (L+ - L-)/(2μ): a loss difference
# over μ; a weight past 1e8 exists in no model (fp16 stops at 65504).
METRIC_BOUND = 1e15  # |value| of any metric
SCALAR_BOUND = 1e15  # |value| of an uploaded scalar
TENSOR_BOUND = 1e8  # |value| of an uploaded weight or delta (so an update norm is finite in float32)
# Counts bounded by what the server assigned: steps and skipped steps by the local steps; the forwards by
# the local steps times a per-step ceiling far above any method's (FedSPZO: 1 + 2·P2 + 2·P1 forwards,
# at most its layer count times that in layer-forwards).
STEP_COUNTS = ("steps", "skipped_steps")
FORWARD_COUNTS = ("forward_passes", "backward_passes", "layer_forwards")
FORWARDS_PER_STEP_BOUND = 1e6
COUNT_BOUND = float(1 << 53)  # any count where the server assigned none: exact as a float
# What a client measures of its own run (runtime/flower/records.py RUNTIME_KEYS): seconds and MB.
MEASURED_KEYS = ("seconds", "peak_rss_mb", "peak_device_mb", "setup_s", "model_load_s", "model_load_cpu_s",
                 "process_start_s", "imports_s", "imports_cpu_s", "worker_start_s", "handoff_s")
MEASURED_BOUND = 1e9  # seconds (31 years) or MB (a petabyte)
# Fields the round body writes into a per-client row itself: a metric may not take their names.
ROW_FIELDS = ("client", "rejected", "bytes_up", "bytes_down", "client_reported") + MEASURED_KEYS

# The default bound (robust.default_bound, 10 unless turned off): each reply's size at most that many times
# the round's median; the medians are kept in ServerState.info under REFERENCE_KEY for rounds with few replies.
MIN_REPLIES_FOR_MEDIAN = 3  # fewer: the median may be a hostile reply's own size
REFERENCE_KEY = "reply_bound"


@dataclass(frozen=True)
class Screened:
    replies: list[tuple[int, Message]]
    rejected: dict[int, str]  # client -> why
    # the clients' own measurements (seconds, peak memory) that passed the checks, by client
    measured: dict[int, dict[str, float]] = field(default_factory=dict)
    # the reference sizes the default bound used this round (ServerState.info[REFERENCE_KEY] from now on)
    reference: dict[str, float] = field(default_factory=dict)


def short(text: str) -> str:
    """A reason cut to MAX_REASON characters: a reason may quote the client's input."""
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def reply_problem(reply: Message, weights: Mapping[str, torch.Tensor], sent: Sent | None = None) -> str | None:
    """Why a reply must not be applied, or None when it is well formed. `sent`: what the server assigned
    (its local steps bound the counts); None bounds them only absolutely."""
    if reply.kind not in CLIENT_KINDS:
        return f"a client does not send {_quote(reply.kind)} messages"
    if reply.tensors:
        if set(reply.tensors) != set(weights):
            return "tensor names differ from the model's"
        for name, tensor in reply.tensors.items():
            if tensor.shape != weights[name].shape or tensor.dtype != weights[name].dtype:
                return f"tensor {_quote(name)} has shape {tuple(tensor.shape)} {tensor.dtype}, expected {tuple(weights[name].shape)} {weights[name].dtype}"
            # one pass: NaN compares false, so it fails with inf and the merely huge
            if not bool((tensor.abs() <= TENSOR_BOUND).all()):
                return f"tensor {_quote(name)} holds NaN, inf or a value beyond ±{TENSOR_BOUND:g}"
    elif reply.kind in ("weights", "delta"):
        return f"a '{reply.kind}' reply without tensors"
    problem = metrics_problem(reply.metrics, sent) or config_problem(reply.config)
    if problem is not None:
        return problem
    if not all(_number(s) and (isinstance(s, int) or math.isfinite(s)) for s in reply.scalars):
        return "a scalar is NaN, inf or not a number"
    if not all(abs(s) <= SCALAR_BOUND for s in reply.scalars):
        return f"a scalar beyond ±{SCALAR_BOUND:g}"
    if not all(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < SEED_LIMIT for seed in reply.seeds):
        return "a seed is outside [0, 2^63)"
    if reply.kind == "seeds" and reply.seeds and len(reply.seeds) != len(reply.scalars):
        return f"{len(reply.seeds)} seeds for {len(reply.scalars)} scalars"
    return None


def metrics_problem(metrics, sent: Sent | None = None) -> str | None:
    """Why a reply's metrics cannot go into the round row. Every value must be a finite number within
    METRIC_BOUND (train_loss may be NaN: a round whose every step was skipped has no loss), counts
    within what the server assigned; names must not be the row's own fields."""
    if not isinstance(metrics, Mapping):
        return f"metrics are a {type(metrics).__name__}, not a mapping"
    if len(metrics) > MAX_METRICS:
        return f"{len(metrics)} metrics, more than {MAX_METRICS}"
    for key, value in metrics.items():
        if not isinstance(key, str) or len(key) > 64:
            return "a metric name that is not a short string"
        if key in ROW_FIELDS:
            return f"metric {_quote(key)} would overwrite the round row's own field"
        if not _number(value):
            return f"metric {_quote(key)} is not a number"
        if not (abs(value) <= METRIC_BOUND or (key == "train_loss" and value != value)):
            return f"metric {_quote(key)} is inf, NaN or beyond ±{METRIC_BOUND:g}"
    missing = [key for key in REQUIRED_METRICS if key not in metrics]
    if missing:
        return f"metrics lack {', '.join(missing)}"
    if not 0 < metrics["num_examples"] <= COUNT_BOUND:
        return "num_examples missing, not positive or beyond 2^53"
    steps = None if sent is None or sent.steps is None else sent.steps
    for key in STEP_COUNTS + FORWARD_COUNTS:
        if key not in metrics:
            continue
        if steps is None:
            bound = COUNT_BOUND
        else:
            bound = float(steps) if key in STEP_COUNTS else float(steps) * FORWARDS_PER_STEP_BOUND
        if not 0 <= metrics[key] <= bound:
            return f"{key} negative or beyond {bound:g} (the server assigned {steps} local steps)"
    return None


def measured_problem(measured) -> str | None:
    """Why a client's own measurements (seconds, peak memory: Exchanged.measured) cannot go into the row."""
    if not isinstance(measured, Mapping):
        return f"measurements are a {type(measured).__name__}, not a mapping"
    for key, value in measured.items():
        if key not in MEASURED_KEYS:
            return f"an unknown measurement {_quote(key)}"
        if value is not None and not (_number(value) and 0 <= value <= MEASURED_BOUND):
            return f"measurement {_quote(key)} is negative, NaN, inf or beyond {MEASURED_BOUND:g}"
    return None


def _number(value) -> bool:
    """An int or float (never a bool) that a float holds: an int like 10**400 is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, float) or abs(value) <= 1 << 1000


def _quote(text) -> str:
    return ascii(str(text)[:64])


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


def as_floats(reply: Message) -> Message:
    """A well-formed reply with its metrics and scalars as floats (what the row and aggregate take)."""
    metrics = {key: float(value) for key, value in reply.metrics.items()}
    scalars = tuple(float(s) for s in reply.scalars)
    return replace(reply, metrics=metrics, scalars=scalars)


def screen(
    replies: Sequence[tuple[int, Message]],
    sent: Mapping[int, Sent],
    state: ServerState,
    algorithm: Algorithm,
    robust: RobustConfig,
    measured: Mapping[int, Mapping[str, float]] | None = None,
) -> Screened:
    """Generic checks, then the method's own (`accept`: the server's lr, counts, seeds, layers, scales),
    then the robust options and the default bound over what was accepted. A reply either passes whole or
    is rejected with a reason; nothing a client sends raises out of here.

    `measured`: what each client measured of its own run (Exchanged.measured); a reply whose
    measurements are malformed is rejected with them."""
    measured = measured or {}
    kept_measured, accepted, rejected = {}, [], {}
    for client, values in measured.items():
        if measured_problem(values) is None:
            kept_measured[client] = {key: None if value is None else float(value) for key, value in values.items()}
    for client, reply in replies:
        try:
            if client in measured and client not in kept_measured:
                raise Rejected(f"client-reported {measured_problem(measured[client])}")
            problem = reply_problem(reply, state.weights, sent[client])
            if problem is not None:
                raise Rejected(problem)
            reply = node_examples(as_floats(reply), sent[client], robust)
            reply = algorithm.accept(state, sent[client], reply)
            problem = metrics_problem(reply.metrics)  # what accept put back is screened like the rest
            if problem is not None:
                raise Rejected(problem)
            accepted.append((client, reply))
        except Rejected as why:
            rejected[client] = short(str(why))
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError) as error:
            # a field of the wrong type deep in a method's config, a number too large for a float:
            # malformed, whatever the field (ArithmeticError: OverflowError, ZeroDivisionError, FloatingPointError)
            rejected[client] = short(f"malformed reply ({type(error).__name__}: {str(error)[:MAX_REASON]})")
    accepted = [(client, bound_reply(reply, state.weights, robust)) for client, reply in accepted]
    reference = dict(state.info.get(REFERENCE_KEY) or {})
    if robust.default_bound is not None and accepted:
        accepted, reference = default_bound(accepted, state.weights, robust.default_bound, reference)
    if robust.aggregator != "mean" and accepted:
        accepted = robust_centre(accepted, state.weights, robust)
    return Screened(accepted, rejected, kept_measured, reference)


def node_examples(reply: Message, sent: Sent, robust: RobustConfig) -> Message:
    """Where nodes own their data the server cannot count it: equal weights, or the claim capped (robust.node_examples)."""
    if sent.examples is not None:
        return reply
    claimed = float(reply.metrics["num_examples"])
    weight = 1.0 if robust.node_examples == "equal" else min(claimed, float(robust.max_node_examples))
    return replace(reply, metrics={**reply.metrics, "num_examples": weight})


def bound_reply(reply: Message, weights: Mapping[str, torch.Tensor], robust: RobustConfig) -> Message:
    """The explicit `robust:` bounds: each scalar clipped, the update's norm capped."""
    if robust.clip_scalar is not None and reply.scalars:
        c = robust.clip_scalar
        reply = replace(reply, scalars=tuple(min(max(s, -c), c) for s in reply.scalars))
    if robust.norm_bound is None:
        return reply
    if reply.scalars:
        norm = float(np.linalg.norm(np.asarray(reply.scalars, dtype=np.float64)))  # each within SCALAR_BOUND: finite
        if norm > robust.norm_bound:
            reply = replace(reply, scalars=tuple(s * (robust.norm_bound / norm) for s in reply.scalars))
    if reply.tensors:
        norm = _update_norm(reply, weights)
        if norm > robust.norm_bound:
            reply = replace(reply, tensors=_scaled_update(reply, weights, robust.norm_bound / norm))
    return reply


def default_bound(
    replies: list[tuple[int, Message]], weights: Mapping[str, torch.Tensor], factor: float,
    previous: Mapping[str, float],
) -> tuple[list[tuple[int, Message]], dict[str, float]]:
    """Safe without any `robust:` setting: each reply's size at most `factor` × the round's median size.

    Sizes: the root mean square of a reply's scalars (so a reply with fewer records than the others
    is not allowed a larger g per record), and the norm of its weight update (‖w − w_global‖, or
    the delta). The reference is the median over the round's replies of nonzero size when there are
    at least MIN_REPLIES_FOR_MEDIAN of them; with fewer, the median may be a hostile reply's own size,
    so the reference is the smaller of it and the previous round's (`previous`). A reply above the bound
    is scaled down to it, never dropped; an honest spread is far inside (measured: no honest reply of
    the test suite is touched). Returns the replies and the references to keep for the next round.
    """
    sizes = {"scalar_rms": [_scalar_rms(reply) for _, reply in replies],
             "update_norm": [_update_norm(reply, weights) for _, reply in replies]}
    reference = dict(previous)
    for kind, values in sizes.items():
        present = sorted(v for v in values if v is not None and v > 0.0)
        if not present:
            continue
        median = float(np.median(present))
        if len(present) < MIN_REPLIES_FOR_MEDIAN and kind in previous:
            median = min(median, float(previous[kind]))
        reference[kind] = median
    bounded = []
    for (client, reply), rms, norm in zip(replies, sizes["scalar_rms"], sizes["update_norm"]):
        if rms is not None and "scalar_rms" in reference and rms > factor * reference["scalar_rms"]:
            scale = factor * reference["scalar_rms"] / rms
            reply = replace(reply, scalars=tuple(s * scale for s in reply.scalars))
        if norm is not None and "update_norm" in reference and norm > factor * reference["update_norm"]:
            reply = replace(reply, tensors=_scaled_update(reply, weights, factor * reference["update_norm"] / norm))
        bounded.append((client, reply))
    return bounded, reference


def _scalar_rms(reply: Message) -> float | None:
    if not reply.scalars:
        return None
    scalars = np.asarray(reply.scalars, dtype=np.float64)  # each within SCALAR_BOUND: no overflow
    return float(np.sqrt(np.mean(scalars * scalars)))


def _update_norm(reply: Message, weights: Mapping[str, torch.Tensor]) -> float | None:
    """‖w − w_global‖ of a weights reply, ‖delta‖ of a delta reply (values within TENSOR_BOUND: finite in float32)."""
    if not reply.tensors:
        return None
    total = 0.0
    for name, tensor in reply.tensors.items():
        update = tensor.float() - weights[name].float() if reply.kind == "weights" else tensor.float()
        total += float(update.pow(2).sum())
    return math.sqrt(total)


def _scaled_update(reply: Message, weights: Mapping[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """The reply's tensors with its update scaled by `factor` (a weights reply's update is from the global model)."""
    scaled = {}
    for name, tensor in reply.tensors.items():
        base = weights[name].float() if reply.kind == "weights" else torch.zeros_like(tensor, dtype=torch.float32)
        scaled[name] = (base + (tensor.float() - base) * factor).to(tensor.dtype)
    return scaled


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
