"""The run configuration: YAML plus dotted `key=value` overrides, validated into typed objects.

This module and the CLI are the only places that read the whole config; everything below them
receives the typed section it needs. Each algorithm owns its settings section (named after the
algorithm, e.g. `fedmezo:`), so switching `algorithm=fedavg` on the command line uses fedavg's
own defaults instead of inheriting keys that mean something else.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zofed.algorithms import ALGORITHMS, Settings
from zofed.errors import ZofedError


# A config is a few kilobytes; a bound keeps a wrong path (a log, a dataset) from being read whole.
MAX_CONFIG_BYTES = 1 << 20
EXCERPT_CHARS = 40  # the most of a user's value an error message shows


class Section(BaseModel):
    # inf and NaN make no setting meaningful: `lr: .inf` would train nothing and exit 0
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TrainableConfig(Section):
    mode: Literal["lora", "full"] = "lora"
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    layers: tuple[int, ...] | None = None  # full mode: only these transformer layers


class TrackingConfig(Section):
    """The `tracking:` config section."""

    tensorboard: bool = True  # event files in the run directory: `tensorboard --logdir runs`
    wandb: bool = False  # needs `pip install wandb`
    wandb_project: str = "zofed"
    # offline needs no network or account; `wandb sync` uploads later
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"


class DataConfig(Section):
    path: str | None = None  # local file/dir or hub dataset id; None for the built-in task
    name: str | None = None  # the hub dataset's config name, e.g. main for openai/gsm8k
    split: str = Field("train", min_length=1)
    columns: dict[str, str] = Field(default_factory=dict, description="task field -> column of the source")
    test_path: str | None = None  # a separate test source (file/dir/hub id); its split is test_split or train
    test_split: str | None = Field(None, min_length=1)  # a split of test_path (or of path) used as the test set
    limit: int | None = Field(None, ge=1)  # training examples, drawn after validation and test are held out
    val_size: int | float = Field(64, gt=0)  # held out of the training split when the source has no validation split
    test_size: int | float = Field(128, gt=0)  # held out of the training split when the source has no test split
    max_length: int | None = Field(None, ge=8)  # None: the task's default
    system_prompt: str | None = None

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        reading = [key for key in ("name", "test_path", "test_split") if getattr(self, key) is not None]
        reading += ["columns"] if self.columns else []
        reading += ["split"] if self.split != "train" else []
        if self.path is None and reading:
            raise ValueError(f"data.{reading[0]} needs data.path (the training source); set data.path or remove it")
        if self.test_split is not None and self.test_path is None and self.test_split == self.split:
            raise ValueError(f"data.test_split={self.test_split} is the training split; pick another split")
        return self

    @property
    def separate_test(self) -> bool:
        """The test set comes from its own source instead of being held out of the training data."""
        return self.test_path is not None or self.test_split is not None


class PartitionConfig(Section):
    """Flower Datasets' partitioners (docs/data.md): method iid, dirichlet, pathological, meta, shard,
    linear, square or exponential."""

    method: str = "iid"
    alpha: float = Field(0.5, gt=0)  # dirichlet's concentration: smaller is more skewed
    labels_per_client: int = Field(2, ge=1)  # pathological
    shards_per_client: int = Field(2, ge=1)  # shard
    min_size: int = Field(1, ge=1)  # dirichlet redraws (up to 10 times) until every client has this many examples


class LocalConfig(Section):
    local_steps: int = Field(10, ge=1, description="local steps (batches) per client per round")
    batch_size: int = Field(4, ge=1)


class EvalConfig(Section):
    every: int = Field(1, ge=1, description="evaluate validation loss every k rounds")
    val_examples: int = Field(64, ge=1)
    test_examples: int = Field(128, ge=1)
    accuracy_examples: int = Field(64, ge=0, description="test examples scored by the generation metrics")
    max_new_tokens: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    # Scored before and after training (eval.py); None: the task's default set (loss and its own metric).
    metrics: tuple[Literal["loss", "exact_match", "rouge_l", "gsm8k_answer"], ...] | None = Field(None, min_length=1)

    @field_validator("metrics", mode="before")
    @classmethod
    def _listed(cls, value):
        # `eval.metrics=loss,rouge_l` on the command line arrives as one string
        return tuple(name.strip() for name in value.split(",")) if isinstance(value, str) else value

    @field_validator("metrics")
    @classmethod
    def _once_each(cls, value):
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists a metric twice; name each once")
        return value


class FlowerConfig(Section):
    """How the Flower runtimes wait for replies; a client that misses the timeout is dropped from its round."""

    timeout_s: float | None = Field(None, gt=0, description="seconds to wait for a round's replies; None: wait for all")
    min_replies: int = Field(1, ge=1, description="fewest replies a round needs, or the run stops with an error")
    connect_timeout_s: float = Field(120.0, gt=0, description="seconds to wait for the SuperNodes to appear")
    # runtime=flower: a fleet where some nodes are offline at the start; a sampled client without a node is dropped
    min_nodes: int | None = Field(None, ge=1, description="SuperNodes to wait for before round 1, the rest may join later; None: one per client")
    root_certificates: str | None = None  # CA certificate of a TLS SuperLink (runtime=flower); None: insecure
    insecure: bool = False  # runtime=flower without TLS to a SuperLink off this machine: refused unless true
    sim_workers: int = Field(1, ge=1, description="flower-sim: Ray workers, each holding one model copy")


class RobustConfig(Section):
    """Screening and robust aggregation (runtime/screening.py)."""

    clip_scalar: float | None = Field(None, gt=0, description="clip every uploaded scalar to [-c, c]")
    norm_bound: float | None = Field(None, gt=0, description="scale down replies whose update norm exceeds this")
    aggregator: Literal["mean", "median", "trimmed-mean"] = "mean"
    trim_fraction: float = Field(0.2, ge=0, lt=0.5, description="trimmed-mean: share cut at each end")
    # runtime=flower: nodes own their data, so the server cannot count a client's examples
    node_examples: Literal["equal", "capped"] = Field("equal", description="weight clients equally, or by their capped claim")
    max_node_examples: int = Field(10_000, ge=1, description="node_examples=capped: the largest claim taken")
    # On unless turned off: each reply's scalar RMS / weight-update norm at most this many times the round's
    # median (runtime/screening.py default_bound). `off` (YAML reads an unquoted off as false) turns it off.
    default_bound: float | None = Field(10.0, gt=1, allow_inf_nan=False,
                                        description="scale down replies above this many times the round's median size; off: no bound")

    @field_validator("default_bound", mode="before")
    @classmethod
    def _off(cls, value):
        return None if value is False or value is None or (isinstance(value, str) and value.lower() == "off") else value


class FaultsConfig(Section):
    """Injected faults (runtime/faults.py), for testing defences: in-process transport only, never sent to a node."""

    drop_rate: float = Field(0.0, ge=0, lt=1, description="probability a sampled client's reply is lost")
    hostile_clients: tuple[int, ...] = ()
    hostile_mode: Literal["scale", "sign-flip", "random", "nan"] = "scale"
    hostile_scale: float = Field(1e3, description="hostile_mode=scale: the factor")


class PrivacyConfig(Section):
    """Differential privacy (docs/privacy.md). `dp: step` protects one example of a client's data:
    every local step's scalars are clipped per example and noised by the client (zo/privacy.py)."""

    dp: Literal["none", "step", "client"] = Field("none", description="none, or step: example-level DP of every ZO step")
    clip: float = Field(1.0, gt=0, allow_inf_nan=False, description="C: each example's scalar is clipped to [-C, C]")
    noise_multiplier: float | None = Field(None, ge=0, allow_inf_nan=False,
                                           description="σ: noise of std σ·C on each step's sum; or give epsilon")
    epsilon: float | None = Field(None, gt=0, allow_inf_nan=False,
                                  description="target ε per client over the whole run: σ is derived before round 1")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee")

    @model_validator(mode="after")
    def _check(self) -> PrivacyConfig:
        if self.dp == "client":
            raise ValueError("dp: client (client-level DP) is not implemented yet; use dp: step (example-level) or none")
        if self.noise_multiplier is not None and self.epsilon is not None:
            raise ValueError("give privacy.noise_multiplier or privacy.epsilon, not both (σ is derived from ε)")
        if self.dp == "step" and self.noise_multiplier is None and self.epsilon is None:
            raise ValueError("dp: step needs privacy.noise_multiplier (σ) or privacy.epsilon (a target ε); give one")
        return self


class RunConfig(Section):
    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    seed: int = Field(0, ge=0, lt=2**63)
    rounds: int = Field(10, ge=1)
    model: str = "smollm2-135m-instruct"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Syntax only here: whether the machine has the device is checked when the model is built.
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$", description="auto, cpu, cuda, cuda:N or mps")
    task: str = "builtin"
    algorithm: str = "fedmezo"
    clients: int = Field(4, ge=1)
    clients_per_round: int | float = Field(1.0, gt=0, description="count, or fraction of clients")
    runtime: Literal["local", "flower-sim", "flower"] = "local"
    superlink: str = "127.0.0.1:9093"  # HOST:PORT of the SuperLink (one HTTP address in Flower 1.41), for runtime=flower
    flower: FlowerConfig = FlowerConfig()
    robust: RobustConfig = RobustConfig()
    faults: FaultsConfig = FaultsConfig()  # injected, for testing defences; in-process runtime only
    tracking: TrackingConfig = TrackingConfig()  # TensorBoard (default) and W&B logging of each round
    output_dir: str = "runs"
    trainable: TrainableConfig = TrainableConfig()
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    local: LocalConfig = LocalConfig()
    eval: EvalConfig = EvalConfig()
    privacy: PrivacyConfig = PrivacyConfig()  # dp: none (default) or step, example-level DP (docs/privacy.md)
    # Settings of every algorithm section present plus the chosen one (with its defaults).
    methods: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.name in (".", ".."):
            # output_dir/. is output_dir itself and output_dir/.. its parent: not a run's own directory
            raise ValueError(f"name={self.name} names no directory of its own; choose a name such as name=run1")
        if isinstance(self.clients_per_round, int) and self.clients_per_round > self.clients:
            raise ValueError(
                f"clients_per_round={self.clients_per_round} exceeds clients={self.clients}"
            )
        if isinstance(self.clients_per_round, float) and self.clients_per_round > 1.0:
            raise ValueError("clients_per_round as a fraction must be in (0, 1]")
        if self.flower.min_nodes is not None and self.flower.min_nodes > self.clients:
            raise ValueError(f"flower.min_nodes={self.flower.min_nodes} exceeds clients={self.clients}; at most one node per client")
        for name, method in list(self.methods.items()):
            try:
                self.methods[name] = method.for_population(self.clients)
            except ValidationError as error:
                raise ValueError(f"{name}: {error.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        if self.robust.aggregator == "trimmed-mean" and int(self.robust.trim_fraction * self.sampled_per_round()) == 0:
            raise ValueError(
                f"robust.trim_fraction={self.robust.trim_fraction} trims no client of the {self.sampled_per_round()} "
                f"sampled per round (the plain mean); raise it to at least {1 / self.sampled_per_round():.3g} or sample more clients"
            )
        if self.runtime != "local" and self.faults != FaultsConfig():
            # injected where the in-process transport runs the clients; a Flower runtime would silently skip them
            raise ValueError(f"faults are injected by runtime=local only, not runtime={self.runtime}; "
                             "remove the faults section or run with runtime=local")
        settings = self.methods.get(self.algorithm)
        if self.runtime == "flower" and getattr(settings, "lr", None) == "auto":
            # the probe trains on client 0's data, which a deployment's server does not hold
            raise ValueError(f"lr: auto is resolved by runtime=local or flower-sim, not runtime=flower; run the config "
                             f"once with runtime=local rounds=1 and give the lr its config.yaml records as {self.algorithm}.lr")
        if self.privacy.dp == "step" and settings is not None:
            _check_private(self, settings)
        if self.robust.aggregator != "mean" and settings is not None and not settings.shared_coordinates:
            raise ValueError(
                f"robust.aggregator={self.robust.aggregator} needs uploads on shared coordinates, which "
                f"{self.algorithm} with these settings does not have; use robust.clip_scalar or robust.norm_bound"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def algorithm_settings(self) -> Settings:
        return self.methods[self.algorithm]

    @property
    def unused_sections(self) -> list[str]:
        """Method sections of the config this run does not read (they stay valid: `zofed compare` reads each)."""
        return sorted(name for name in self.methods if name != self.algorithm)

    def sampled_per_round(self) -> int:
        if isinstance(self.clients_per_round, float):
            return max(1, round(self.clients_per_round * self.clients))
        return self.clients_per_round

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, in the same shape a user writes it."""
        data = self.model_dump(mode="json", exclude={"methods"})
        for name, settings in self.methods.items():
            data[name] = settings.model_dump(mode="json")
        return data


def _check_private(config: RunConfig, settings: Settings) -> None:
    """What dp: step cannot cover, refused before anything runs."""
    if settings.scalars_per_step is None:
        raise ValueError(f"privacy.dp: step needs a zeroth-order method (a per-example scalar per step); {config.algorithm} "
                         "trains by backprop (its update is a gradient, not scalars); use fedmezo, fedkseed, decomfl, ... or dp: none")
    if getattr(settings, "lr", None) == "auto":
        raise ValueError(f"privacy.dp: step with {config.algorithm}.lr: auto: the range test picks the lr from client 0's "
                         f"unnoised held loss, which no guarantee covers; give {config.algorithm}.lr a number")
    if config.runtime == "flower" and config.privacy.epsilon is not None:
        raise ValueError("privacy.epsilon with runtime=flower: the server does not know the nodes' partition sizes "
                         "(the sampling rates) before round 1; give privacy.noise_multiplier instead")


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: a few hundred bytes of nested `*alias` would expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event().start_mark)
        return super().compose_node(parent, index)


class _AliasRefused(yaml.YAMLError):
    def __init__(self, mark) -> None:
        super().__init__("aliases are not allowed")
        self.problem_mark = mark


def load_yaml(text: str, source: str) -> Any:
    """YAML text of a config (or an override's value) as plain data; one line naming `source` if it is not."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except _AliasRefused as error:
        raise ZofedError(f"{source} uses a YAML alias (*name) at line {error.problem_mark.line + 1}; zofed configs "
                         "do not expand aliases: write the value out") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        # The parser's own message quotes the offending text: never shown (the file may be anyone's).
        raise ZofedError(f"{source} is not valid YAML{where}; fix the syntax") from None


def read_config_file(path: str | Path) -> Any:
    """A config file's YAML, read with bounds: its size, UTF-8 and no aliases."""
    path = Path(path)
    if not path.is_file():
        raise ZofedError(f"config file '{os.path.abspath(path)}' not found; pass the path of a YAML file such as "
                         "configs/quickstart.yaml")
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ZofedError(f"config file '{path}' is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a few "
                         "kilobytes of YAML: check the path")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ZofedError(f"config file '{path}' is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    return load_yaml(text, f"config file '{path}'")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A config file plus overrides: the file's relative paths are taken from the file's own directory,
    an override's from the current directory (where the user typed it)."""
    raw = read_config_file(path)
    if raw is None:
        raise ZofedError(f"config file '{path}' is empty; write the run's settings in it (see configs/quickstart.yaml)")
    if not isinstance(raw, dict):
        raise ZofedError(f"config file '{path}' must hold a mapping of keys to values (see configs/quickstart.yaml)")
    return parse_config(resolve_file_paths(raw, Path(path).parent), overrides)


# Config keys holding a local path. A relative one in a config file names a file next to the config;
# `model` and `data.path` may also name a hub id or a built-in, so they are taken as paths only
# where the file exists or the value can only be a path (./x, ../x, x.jsonl, a/b/c).
PATH_KEYS = (("data", "path"), ("data", "test_path"), ("model",), ("flower", "root_certificates"), ("output_dir",))
_ALWAYS_PATHS = {("flower", "root_certificates"), ("output_dir",)}
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".gguf")


def looks_like_path(value: str) -> bool:
    """A value that can only name a local file or directory (never a hub id or a built-in name)."""
    return value.startswith((".", "/", "~")) or value.lower().endswith(DATA_SUFFIXES) or value.count("/") > 1


def resolve_file_paths(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """`raw` with the relative paths it holds made absolute against `base_dir` (the config file's directory)."""
    raw = dict(raw)
    for keys in PATH_KEYS:
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                break
            node[key] = node = dict(child)
        else:
            value = node.get(keys[-1])
            if not isinstance(value, str) or not value or "\0" in value or Path(value).expanduser().is_absolute():
                continue  # a NUL byte is no path: left for the check that names the key
            candidate = base_dir / value
            try:
                local = keys in _ALWAYS_PATHS or candidate.exists() or looks_like_path(value)
            except OSError:  # a name too long for the file system, say: not a file here
                local = looks_like_path(value)
            if local:
                node[keys[-1]] = os.path.abspath(candidate)
    return raw


def parse_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Every problem of the config is reported at once, in one line, so that three typos cost one run."""
    data = _apply_overrides(dict(raw), overrides)
    # the keys the user typed on the command line: only their values are echoed in an error
    typed = {override.partition("=")[0] for override in overrides}
    problems: list[str] = []
    algorithm = data.get("algorithm", RunConfig.model_fields["algorithm"].default)
    if not isinstance(algorithm, str):
        raise ZofedError("config key 'algorithm' must be an algorithm name such as fedmezo")
    if algorithm not in ALGORITHMS:
        close = difflib.get_close_matches(algorithm, list(ALGORITHMS), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problems.append(f"unknown algorithm '{excerpt(algorithm)}'; {hint}use one of: {', '.join(sorted(ALGORITHMS))}")
    _refuse_overrides_of_unread_sections(algorithm, overrides)
    methods = {}
    for name in sorted(set(ALGORITHMS) & (set(data) | {algorithm})):
        section = data.pop(name, None) or {}
        if not isinstance(section, dict):
            problems.append(f"config section '{name}' must be a mapping of settings")
            continue
        _refuse_non_string_keys(section, f"section '{name}'")
        try:
            methods[name] = ALGORITHMS[name].settings(**section)
        except ValidationError as error:
            problems += _describe(error, typed, prefix=name)
    _refuse_non_string_keys(data, "the top level")
    try:
        config = RunConfig(**data, methods=methods)
    except ValidationError as error:
        problems += _describe(error, typed)
    if problems:
        if len(problems) == 1:
            raise ZofedError(problems[0])
        raise ZofedError(f"{len(problems)} problems in the config: " + " | ".join(
            f"({number}) {problem}" for number, problem in enumerate(problems, 1)))
    _refuse_non_finite(config.to_dict())
    return config


def override_section(override: str) -> str:
    """The top-level section (or key) an override `a.b=value` sets."""
    return override.partition("=")[0].split(".")[0]


def overrides_read_by(algorithm: str | None, overrides: Sequence[str]) -> list[str]:
    """The overrides a run of `algorithm` reads: all but those of other methods' sections (one list of
    overrides can then serve several methods' runs, as in `zofed compare` and the benchmarks)."""
    return [o for o in overrides if override_section(o) not in ALGORITHMS or override_section(o) == algorithm]


def _refuse_overrides_of_unread_sections(algorithm: str, overrides: list[str] | tuple[str, ...]) -> None:
    """`algorithm=fedavg fedmezo.lr=1e-3` would train with fedavg's own lr: refused, not ignored.

    A config file may hold several methods' sections (`zofed compare` reads each one); an override
    typed for this run names a setting the user expects this run to use.
    """
    for override in overrides:
        section = override_section(override)
        if section in ALGORITHMS and section != algorithm:
            raise ZofedError(f"override '{excerpt(override.partition('=')[0])}' sets a setting of {section}, but this run's "
                             f"algorithm is {excerpt(algorithm)}, which does not read it; override {algorithm}.KEY "
                             f"instead (or algorithm={section})")


def _refuse_non_string_keys(section: dict, where: str) -> None:
    # YAML allows `1: x` or `null: x`; keyword arguments (and config keys) are names
    if not all(isinstance(key, str) for key in section):
        raise ZofedError(f"the config has a key that is not a name in {where}; fix it in the YAML")


def _refuse_non_finite(document: Any, location: str = "") -> None:
    """No number of the resolved config is inf or NaN (nested settings included, whatever their own model allows)."""
    if isinstance(document, float) and not math.isfinite(document):
        raise ZofedError(f"config key '{location}': {document} is not a finite number; fix it in the YAML or "
                         f"override it with {location}=...")
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    for key, value in items:
        _refuse_non_finite(value, f"{location}.{key}" if location else str(key))


def _apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ZofedError(f"override '{excerpt(override)}' is not of the form key=value (e.g. rounds=2)")
        try:
            value = yaml.load(text, Loader=_NoAliasLoader) if text else ""
        except yaml.YAMLError:  # aliases included: the text is taken as it is, never expanded
            value = text
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ZofedError(f"override '{excerpt(key)}': '{excerpt(part)}' is not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return data


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters of `value`, control characters escaped: what an error may echo of user input."""
    text = value if isinstance(value, str) else repr(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _describe(error: ValidationError, typed: set[str], prefix: str = "") -> list[str]:
    return [_describe_one(problem, typed, prefix) for problem in error.errors()]


def _describe_one(problem: dict[str, Any], typed: set[str], prefix: str) -> str:
    parts = [str(part) for part in (prefix, *problem["loc"]) if part != ""]
    location = excerpt(".".join(parts), 80)
    if problem["type"] == "extra_forbidden":
        return _unknown_key(parts, location in typed)
    message = excerpt(problem["msg"].removeprefix("Value error, "), 300)
    if not location:
        return f"invalid config: {message}"
    shown = problem.get("input")
    # A value is echoed only where the user typed it (an override) or where it is a plain number:
    # the config file may be a link to someone's secret, and its text is not repeated.
    echo = shown is not None and not isinstance(shown, (dict, list)) and (
        location in typed or (isinstance(shown, (int, float)) and not isinstance(shown, bool)))
    got = f" (got {excerpt(repr(shown))})" if echo else ""
    return f"config key '{location}': {message}{got}; fix it in the YAML or override it with {location}=..."


def _unknown_key(parts: list[str], typed: bool) -> str:
    """Names the unknown key only when the user typed it or it is a near-miss of a known one (a typo)."""
    known = _known_keys(parts[:-1])
    section = f"section '{excerpt('.'.join(parts[:-1]))}'" if len(parts) > 1 else "the top level"
    close = difflib.get_close_matches(parts[-1], known, n=1, cutoff=0.75)
    if typed or close:
        hint = f"; did you mean '{close[0]}'?" if close else "; check the spelling"
        return f"unknown config key '{excerpt('.'.join(parts), 80)}'{hint} (see configs/quickstart.yaml for the known keys)"
    listing = f": known keys are {', '.join(sorted(known))}" if known else ""
    return f"the config has a key zofed does not know in {section} (not shown){listing}; remove or rename it"


def _known_keys(parts: list[str]) -> list[str]:
    """The keys the section at `parts` accepts (empty where it is not a settings model)."""
    model: type[BaseModel] = RunConfig
    if parts and parts[0] in ALGORITHMS:
        model, parts = ALGORITHMS[parts[0]].settings, parts[1:]
    for part in parts:
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    keys = [key for key in model.model_fields if key != "methods"]
    return keys + sorted(ALGORITHMS) if model is RunConfig else keys
