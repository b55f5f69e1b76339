"""The run configuration: YAML plus dotted `key=value` overrides, validated into typed objects.

This module and the CLI are the only places that read the whole config; everything below them
receives the typed section it needs. Each algorithm owns its settings section (named after the
algorithm, e.g. `fedmezo:`), so switching `algorithm=fedavg` on the command line uses fedavg's
own defaults instead of inheriting keys that mean something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zofed.algorithms import ALGORITHMS, Settings, get_algorithm
from zofed.errors import ZofedError
from zofed.tracking import TrackingConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainableConfig(Section):
    mode: Literal["lora", "full"] = "lora"
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    layers: tuple[int, ...] | None = None  # full mode: only these transformer layers


class DataConfig(Section):
    path: str | None = None  # local file/dir or hub dataset id; None for the built-in task
    name: str | None = None  # the hub dataset's config name, e.g. main for openai/gsm8k
    split: str = Field("train", min_length=1)
    columns: dict[str, str] = Field(default_factory=dict, description="task field -> column of the source")
    test_path: str | None = None  # a separate test source (file/dir/hub id); its split is test_split or train
    test_split: str | None = Field(None, min_length=1)  # a split of test_path (or of path) used as the test set
    limit: int | None = Field(None, ge=1)
    val_size: int | float = Field(64, gt=0)
    test_size: int | float = Field(128, gt=0)  # held out from the training source when no test source is given
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
    method: str = "iid"
    alpha: float = Field(0.5, gt=0)
    labels_per_client: int = Field(2, ge=1)


class LocalConfig(Section):
    local_steps: int = Field(10, ge=1, description="local steps (batches) per client per round")
    batch_size: int = Field(4, ge=1)


class EvalConfig(Section):
    every: int = Field(1, ge=1, description="evaluate validation loss every k rounds")
    val_examples: int = Field(64, ge=1)
    test_examples: int = Field(128, ge=1)
    accuracy_examples: int = Field(64, ge=0)
    max_new_tokens: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)


class FlowerConfig(Section):
    """How the Flower runtimes wait for replies; a client that misses the timeout is dropped from its round."""

    timeout_s: float | None = Field(None, gt=0, description="seconds to wait for a round's replies; None: wait for all")
    min_replies: int = Field(1, ge=1, description="fewest replies a round needs, or the run stops with an error")
    connect_timeout_s: float = Field(120.0, gt=0, description="seconds to wait for the SuperNodes to appear")
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


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ZofedError(f"config file '{path}' not found; pass the path of a YAML file such as configs/quickstart.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ZofedError(f"config file '{path}' is not valid YAML{where}; fix the syntax") from None
    if raw is None:
        raise ZofedError(f"config file '{path}' is empty; write the run's settings in it (see configs/quickstart.yaml)")
    if not isinstance(raw, dict):
        raise ZofedError(f"config file '{path}' must hold a mapping of keys to values (see configs/quickstart.yaml)")
    return parse_config(raw, overrides)


def parse_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    data = _apply_overrides(dict(raw), overrides)
    algorithm = data.get("algorithm", RunConfig.model_fields["algorithm"].default)
    if not isinstance(algorithm, str):
        raise ZofedError("config key 'algorithm' must be an algorithm name such as fedmezo")
    get_algorithm(algorithm)  # unknown name -> one-line error listing the known ones
    methods = {}
    for name in sorted(set(ALGORITHMS) & set(data) | {algorithm}):
        section = data.pop(name, None) or {}
        if not isinstance(section, dict):
            raise ZofedError(f"config section '{name}' must be a mapping of settings")
        try:
            methods[name] = ALGORITHMS[name].settings(**section)
        except ValidationError as error:
            raise ZofedError(_describe(error, prefix=name)) from None
    try:
        return RunConfig(**data, methods=methods)
    except ValidationError as error:
        raise ZofedError(_describe(error)) from None


def _apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ZofedError(f"override '{override}' is not of the form key=value (e.g. rounds=2)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ZofedError(f"override '{override}': '{part}' is not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return data


def _describe(error: ValidationError, prefix: str = "") -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{location}'; check the spelling (see configs/quickstart.yaml for the known keys)"
    message = first["msg"].removeprefix("Value error, ")
    if not location:
        return f"invalid config: {message}"
    shown = first.get("input")
    got = f" (got {shown!r})" if shown is not None and not isinstance(shown, dict) else ""
    return f"config key '{location}': {message}{got}; fix it in the YAML or override it with {location}=..."
