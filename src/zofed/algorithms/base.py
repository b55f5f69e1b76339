"""The contract every federated method implements, and the registry that holds them.

A method is a small object with no hidden state: the server's state goes in and comes out of
each call explicitly, and a client's work is a pure function of the message it received and
the environment the runtime hands it (its data, the shared model's trainable tensors and a
loss closure). Nothing here imports transformers, flwr or the config.
"""

from __future__ import annotations

import math
import re

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from zofed.lazy import lazy_import
from zofed.messages import JsonValue, Message
from zofed.zo.directions import DirectionSampler, make_directions, require_same_stream
from zofed.zo.seeds import mix_seed
from zofed.zo.step import Estimator, forward_passes

torch = lazy_import("torch")  # imported on first use: the registry reads this module without torch

Batch = Mapping[str, "torch.Tensor"]  # a string: naming the type must not import torch
LAYER_NAME = re.compile(r"\.(?:layers|h)\.(\d+)\.")


@dataclass(frozen=True)
class ServerState:
    """Everything the server carries between rounds; checkpointed as tensors + JSON.

    `weights` are the global trainable tensors in view order. `buffers` hold any other tensors a
    method keeps (momentum, initial weights). `info` is JSON-serialisable bookkeeping.
    """

    weights: Mapping[str, torch.Tensor]
    buffers: Mapping[str, torch.Tensor] = field(default_factory=dict)
    info: Mapping[str, JsonValue] = field(default_factory=dict)


def server_device(state: ServerState) -> torch.device:
    """Where the server's state lives, the model's device: its aggregation and replay run there."""
    return next(iter(state.weights.values())).device if state.weights else torch.device("cpu")


def tensors_on(tensors: Mapping[str, torch.Tensor], device: torch.device) -> Mapping[str, torch.Tensor]:
    """`tensors` on `device`; the same mapping where they already are (on the CPU nothing is copied)."""
    if all(tensor.device == device for tensor in tensors.values()):
        return tensors
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def state_on(state: ServerState, device: torch.device) -> ServerState:
    """`state` with its tensors on `device` (a checkpoint loads on the host)."""
    return replace(state, weights=tensors_on(state.weights, device), buffers=tensors_on(state.buffers, device))


def client_directions(config: Mapping[str, Any], device: torch.device) -> DirectionSampler:
    """The downlink's direction sampler on a client whose tensors live on `device`; refuses a stream
    other than the server's (a gaussian CUDA stream against a CPU server, another instruction set)."""
    sampler = make_directions(str(config["directions"]), int(config["pool_size"]))
    if "stream" in config:  # absent where only the client ever draws its z (directions_config)
        require_same_stream(str(config["stream"]), sampler.stream_id(device), f"this client on {device}")
    return sampler


class SplitForward(Protocol):
    """The model run in two parts at layer s (block 1: embeddings + layers < s; block 2: the rest).

    `prefix` runs block 1 once and returns an opaque cache; `suffix_loss` runs only block 2 from
    it, giving the loss a full forward would give as long as only block 2's tensors changed.
    `tensor_layers[i]` places trainable tensor i (view order) in the forward: its layer, −1 before
    the layers (embeddings, a tied head), `num_layers` after them (final norm, an untied head).
    """

    @property
    def num_layers(self) -> int: ...

    @property
    def tensor_layers(self) -> tuple[int, ...]: ...

    @property
    def layer_modules(self) -> Sequence[torch.nn.Module]:
        """The model's transformer layers in forward order."""
        ...

    def prefix(self, batch: Batch, split: int) -> Any: ...

    def suffix_loss(self, cache: Any) -> float: ...


@dataclass(frozen=True)
class ClientEnv:
    """What a client works with, handed in by the runtime for one round.

    `tensors` are the live trainable tensors of the client's model (perturbing them changes the
    model), already holding the round's start model: the runtime applied the downlink (weights or
    replay) before calling `train`. `parameters` are the same tensors as autograd leaves for
    backprop baselines. `split` is the model's split forward where the model has one.
    """

    client_id: int
    seed: int  # this client's seed for this round; every local step derives its own from it
    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]
    parameters: tuple[torch.nn.Parameter, ...]
    batches: Iterator[Batch]
    loss: Callable[[Batch], float]  # forward only, eval mode, inference mode
    loss_for_backward: Callable[[Batch], torch.Tensor]  # train mode, graph kept
    num_examples: int
    split: SplitForward | None = None


@dataclass(frozen=True)
class Sent:
    """What the server itself knows of one client's round: never anything the client claims."""

    client: int
    message: Message  # the downlink the server built for this client this round (its config holds the assigned lr, ...)
    seed: int  # the client's round seed as the server derives it (experiment.client_seed(round, client))
    examples: int | None  # the client's example count from the server's own partition; None where nodes own their data
    # Extension of the agreed interface: the local steps the server asked for (config.local.local_steps),
    # the bound on a reply's records; None where the server does not know it (then no bound is checked).
    steps: int | None = None


class Rejected(Exception):
    """A reply the server will not apply; str(exc) is the one-line reason."""


class Settings(BaseModel):
    """Base for each method's settings: strict, so a misspelt key is an error, not a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Preparations every method with these settings runs before round 1, ahead of its entry's own
    # (the ZO methods' `lr: auto` range test): declared once on a settings base, never per method.
    PREPARE: ClassVar[tuple["Preparation", ...]] = ()

    # What a method declares to the runtime, instead of the runtime looking for fields by name:
    @property
    def shared_coordinates(self) -> bool:
        """Whether every client's upload lives on the same coordinates (robust median/trimmed mean need it)."""
        return True

    @property
    def replays_directions(self) -> bool:
        """Whether a party other than the client rebuilds its directions from seeds (the server's
        rebuild or replay, another client's catch-up): then every party must draw the same z.
        A method that draws no directions (FedAvg) keeps False; every ZO method declares its own."""
        return False

    @property
    def scalars_per_step(self) -> int | None:
        """Scalars (directions) a client's local step releases from one batch, which the privacy accountant
        composes (privacy.dp: step); None where a step's update is not made of per-example scalars (backprop)."""
        return None

    def for_population(self, clients: int) -> "Settings":
        """These settings for a run of `clients` clients (a method that plans per client learns the count)."""
        return self


class Algorithm(Protocol):
    def init(self, weights: Mapping[str, torch.Tensor], seed: int) -> ServerState:
        """Server state before round 1 from the initial trainable weights."""
        ...

    def configure(self, state: ServerState, round: int, clients: Sequence[int]) -> list[Message]:
        """One message per sampled client (same order), server -> client."""
        ...

    def train(self, message: Message, env: ClientEnv) -> Message:
        """Client work for one round; the reply travels client -> server."""
        ...

    def accept(self, state: ServerState, sent: Sent, reply: Message) -> Message:
        """The reply the server will aggregate, every field the server knows taken from the server
        (assigned lr, example count, expected seeds, layers, scales); raises `Rejected` otherwise.
        The runtime has already checked the generic form (tensor shapes, finite scalars, metric types)."""
        ...

    def aggregate(
        self, state: ServerState, round: int, replies: Sequence[tuple[int, Message]]
    ) -> ServerState:
        """New server state from (client id, reply) pairs of the clients that answered, all accepted."""
        ...


@dataclass(frozen=True)
class PrepareEnv:
    """What a preparation sees of the run: the initial trainable weights (view order), the model's
    split (its layers, which tensor sits in which) and the local batch size.

    `weights` are the model's own tensors, not a copy (a copy would sit in every measured peak), so
    a probe's training moves them: probes that must each start from the initial values (an lr
    probe) copy those values before the first probe runs.
    """

    weights: Mapping[str, torch.Tensor]
    split: SplitForward | None
    batch_size: int


@dataclass(frozen=True)
class Probe:
    """One client round a preparation runs before round 1.

    `message` is the downlink, built by the method's own `configure`. `lowered`: layers the client
    already holds in `dtype` when the round starts, as a client process of its own would load
    them; the measurement leaves their full-precision load out.
    """

    message: Message
    lowered: tuple[int, ...] = ()
    dtype: torch.dtype | None = None


@dataclass(frozen=True)
class ProbeResult:
    """One probe round: the config its downlink carried (the probe's tensors are gone by then), the
    client's reply and what the client's process measured (`peak_rss_mb`, `resident_before_mb`)."""

    sent: Mapping[str, JsonValue]
    reply: Message
    measured: Mapping[str, float]


@dataclass(frozen=True)
class Preparation:
    """A measurement a method needs before round 1, declared on its registry entry.

    The runtime (runtime/prepare.py) runs it when `needed(settings)`: `probes` yields the client
    rounds to run, one at a time (the runtime encodes and runs each before it asks for the next,
    so one probe's downlink is held at a time), in a client process of their own (so what a probe
    measures is that process's, as on a node); `fit` turns their results, in probe order, into
    the value of settings field `fills`. The run's config.yaml records that value, `--resume`
    reuses it, and a config that gives it skips the measurement.

    `in_process` instead (a probe that measures no memory, such as the lr range test): the name
    of a measurement the runtime provides (runtime/prepare.py `IN_PROCESS`), called as
    `(settings, experiment)` in the run's own process once its model is built; it returns the
    value itself and the files the run directory keeps of it ({name: bytes}); `probes` and `fit`
    are then unused. A name, not a function, because the algorithms layer never imports the runtime.
    """

    fills: str
    needed: Callable[[Settings], bool]
    probes: Callable[[Any, PrepareEnv], Iterator[Probe]] | None = None
    fit: Callable[[Any, PrepareEnv, Sequence[ProbeResult]], Any] | None = None
    in_process: str | None = None


@dataclass(frozen=True)
class AlgorithmEntry:
    name: str
    description: str
    settings: type[Settings]
    build: Callable[[Any], Algorithm]
    basis: str = ""  # what follows the paper / official code and what is our design (shown by `zofed list`)
    prepare: tuple[Preparation, ...] = ()  # measured before round 1, in this order
    # The settings' defaults taken from the official code, as {field: value}: a test holds the settings to them,
    # and `zofed list` and docs/methods.md print them. Empty where no official code is public.
    official_defaults: Mapping[str, Any] = field(default_factory=dict)
    # Every place zofed differs from the official code (or, with none public, from the paper): one short line
    # each, printed by `zofed list` and rendered into docs/methods.md (benchmarks/render_results.py).
    differs: tuple[str, ...] = ()


def official_defaults_text(entry: AlgorithmEntry) -> str:
    """`lr 3e-7, mu 5e-4, num_seeds 4096`: an entry's official defaults as `zofed list` and docs/methods.md print them."""
    def value(v: Any) -> str:
        if isinstance(v, float) and v != 0 and not 1e-2 <= abs(v) < 1e4:
            mantissa, exponent = f"{v:e}".split("e")
            return f"{float(mantissa):g}e{int(exponent)}"
        return f"{v:g}" if isinstance(v, float) else str(v)
    return ", ".join(f"{key} {value(v)}" for key, v in entry.official_defaults.items())


ALGORITHMS: dict[str, AlgorithmEntry] = {}


def register(entry: AlgorithmEntry) -> AlgorithmEntry:
    if entry.name in ALGORITHMS:
        raise ValueError(f"algorithm '{entry.name}' is already registered")
    # the settings base's preparations (ZO: the lr range test) run first, then the method's own
    entry = replace(entry, prepare=tuple(entry.settings.PREPARE) + tuple(entry.prepare))
    for step in entry.prepare:  # the runtime fills this field with what the preparation measured
        if step.fills not in entry.settings.model_fields:
            raise ValueError(f"algorithm '{entry.name}' prepares '{step.fills}', which is not one of its settings")
    ALGORITHMS[entry.name] = entry
    return entry


def get_algorithm(name: str) -> AlgorithmEntry:
    try:
        return ALGORITHMS[name]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        from zofed.errors import ZofedError

        raise ZofedError(f"unknown algorithm '{name}'; use one of: {known}") from None


def build_algorithm(name: str, settings: Mapping[str, Any] | Settings | None = None) -> Algorithm:
    entry = get_algorithm(name)
    if not isinstance(settings, Settings):
        settings = entry.settings(**dict(settings or {}))
    return entry.build(settings)


def sample_weighted_mean(
    tensor_sets: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Σ w_k·T_k / Σ w_k per name, accumulated in float32 whatever the tensors' dtype."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("sample-weighted mean needs a positive total weight")
    names = list(tensor_sets[0])
    mean = {name: torch.zeros_like(tensor_sets[0][name], dtype=torch.float32) for name in names}
    for tensors, weight in zip(tensor_sets, weights):
        for name in names:
            mean[name].add_(tensors[name].float(), alpha=weight / total)
    return {name: mean[name].to(tensor_sets[0][name].dtype) for name in names}


def cloned(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies, so the caller's tensors (the live model) never alias the server's state or a reply."""
    return {name: tensor.detach().clone() for name, tensor in tensors.items()}


def initial_state(weights: Mapping[str, torch.Tensor], info: Mapping[str, JsonValue] | None = None,
                  keep_initial: bool = False) -> ServerState:
    """The server state before round 1: a copy of the initial weights, the method's bookkeeping `info`,
    and with `keep_initial` a second copy of the weights in the buffers (FedKSeed rebuilds from them)."""
    return ServerState(weights=cloned(weights), buffers=cloned(weights) if keep_initial else {}, info=dict(info or {}))


def current_weights(env: ClientEnv) -> dict[str, torch.Tensor]:
    return cloned(dict(zip(env.names, env.tensors)))


def zo_metrics(env: ClientEnv, losses: Sequence[float], skipped: int, directions_per_step: int = 1,
               estimator: Estimator = "central") -> dict[str, float]:
    """A ZO client's round: every local step, a skipped one too, costs the estimator's forwards."""
    steps = len(losses) + skipped
    return {
        "train_loss": sum(losses) / len(losses) if losses else math.nan,
        "steps": float(steps),
        "skipped_steps": float(skipped),
        "forward_passes": float(forward_passes(estimator, directions_per_step) * steps),
        "num_examples": float(env.num_examples),
    }


def accept_common(sent: Sent, reply: Message, kind: str) -> Message:
    """The checks every method's `accept` starts with: the kind it sends, this round, the server's example count.

    A claimed count that differs from the server's partition is a lie, rejected; where nodes own
    their data (`sent.examples` None) the claim stays, already bounded by the runtime's policy.
    """
    if reply.kind != kind:
        raise Rejected(f"a '{reply.kind}' reply where this method's clients send '{kind}'")
    if reply.round != sent.message.round:
        raise Rejected(f"a reply for round {reply.round} in round {sent.message.round} (replayed or stale)")
    claimed = reply.metrics.get("num_examples")
    if sent.examples is None:
        return reply
    if claimed != float(sent.examples):
        raise Rejected(f"claims {claimed} examples where the server's partition gives it {sent.examples}")
    return replace(reply, metrics={**reply.metrics, "num_examples": float(sent.examples)})


def assigned_lr(sent: Sent, reply: Message) -> Message:
    """The reply with the lr the server assigned; a reply claiming another lr is rejected."""
    lr = float(sent.message.config["lr"])
    if reply.config.get("lr") != lr:
        raise Rejected(f"claims lr {reply.config.get('lr')!r} where the server assigned {lr}")
    return replace(reply, config={**reply.config, "lr": lr})


def mezo_step_seeds(sent: Sent, seeds: Sequence[int], scalars: Sequence[float]) -> None:
    """Raise unless `seeds` are MeZO-style records: one per local step t, seed mix_seed(client seed, t)."""
    steps = sent.steps if sent.steps is not None else len(seeds)
    step_records(seeds, scalars, [(mix_seed(sent.seed, step),) for step in range(steps)], sent)


def step_records(seeds: Sequence[int], scalars: Sequence[float], expected: Sequence[Sequence[int]], sent: Sent) -> None:
    """Raise unless `seeds` are the records of every local step in order: step t's are `expected[t]`.

    A client uploads a record for every step it ran, a skipped one (non-finite loss) with g = 0.0,
    so the count is the server's: `sent.steps` × records per step. Where the server does not know
    its steps (`sent.steps` None) `expected` covers as many steps as the reply claims, and the
    records must still be those steps' in order. Rejects missing, duplicated, foreign, replayed
    (another round's), reordered and surplus records.
    """
    width = len(expected[0]) if expected else 1
    if len(seeds) != len(scalars):
        raise Rejected(f"{len(seeds)} seeds for {len(scalars)} scalars")
    if len(seeds) % width:
        raise Rejected(f"{len(seeds)} records do not make whole steps of {width}")
    if sent.steps is not None and len(seeds) != sent.steps * width:
        raise Rejected(f"{len(seeds)} records for {sent.steps} local steps of {width}")
    step_of = {tuple(records): step for step, records in enumerate(expected)}
    for step, start in enumerate(range(0, len(seeds), width)):
        found = step_of.get(tuple(seeds[start : start + width]))
        if found is None:
            raise Rejected("a seed the server did not derive for this client and round (foreign or replayed)")
        if found != step:
            raise Rejected("a local step's seeds appear twice or out of order")


def name_layer(name: str) -> int | None:
    """The layer a parameter name belongs to in transformers' decoder layer lists (`layers.i`, GPT-2's `h.i`)."""
    match = LAYER_NAME.search(name)
    return int(match.group(1)) if match else None
