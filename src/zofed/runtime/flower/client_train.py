"""The ClientApp's training message: the experiment, the client's kept model and its round.

Imported by `client_app.train` on a process's first training message, so a node's hello and
welcome never load torch, transformers or the model (see client_app's docstring).
"""

from __future__ import annotations

import time

_IMPORTS_STARTED, _IMPORTS_CPU_STARTED = time.time(), time.process_time()

import json  # noqa: E402
from collections.abc import Mapping, MutableMapping  # noqa: E402
from pathlib import Path  # noqa: E402

from flwr.app import Context, Message  # noqa: E402

from zofed.algorithms import Algorithm, build_algorithm  # noqa: E402
from zofed.config import RunConfig, parse_config  # noqa: E402
from zofed.errors import ZofedError  # noqa: E402
from zofed.runtime.client import KeptCopy, KeptFile, KeptInMemory  # noqa: E402
from zofed.runtime.experiment import Experiment, build_experiment, build_model, prepare_data  # noqa: E402
from zofed.runtime.flower.records import RUN, ContextKept, pack, partition_id, unpack  # noqa: E402
from zofed.runtime.round import client_round  # noqa: E402

# This module's imports, reported once with the first training message (then emptied).
_IMPORT_COSTS = {"imports_s": time.time() - _IMPORTS_STARTED, "imports_cpu_s": time.process_time() - _IMPORTS_CPU_STARTED}

# One experiment per process: (config JSON + cache key, experiment, algorithm). A new key replaces it.
_CACHE: list[tuple[str, Experiment, Algorithm]] = []


def train(message: Message, context: Context, process_costs: MutableMapping[str, float]) -> Message:
    """One training message; `process_costs`: what the process paid before it, reported once and emptied."""
    config = node_run_config(context)
    uplink, runtime = serve_round(config, partition_id(context), unpack(message.content), kept_copy(context, config), process_costs)
    return Message(pack(uplink, runtime), reply_to=message)


def serve_round(
    config: RunConfig, client: int, downlink: bytes, kept: KeptCopy, process_costs: MutableMapping[str, float],
    cache_key: str = "",
) -> tuple[bytes, dict[str, float]]:
    """The client's round on the process's cached experiment (a ClientApp's, or a node's warm worker's);
    `cache_key`: what else must match for the cached experiment to be reused (the worker's run id, files)."""
    setup_started = time.perf_counter()
    experiment, algorithm, model_load = cached_experiment(config, cache_key)
    setup_s = time.perf_counter() - setup_started
    uplink, measured = client_round(experiment, algorithm, client, downlink, kept)
    return uplink, {**measured, "setup_s": setup_s, **model_load, **unreported_costs(process_costs)}


def unreported_costs(process_costs: MutableMapping[str, float]) -> dict[str, float]:
    """The process's start and imports not yet reported (client_app's, then this module's), emptied."""
    costs = dict(process_costs)
    for key, value in _IMPORT_COSTS.items():
        costs[key] = costs.get(key, 0.0) + value
    process_costs.clear()
    _IMPORT_COSTS.clear()
    return costs


def kept_copy(context: Context, config: RunConfig) -> KeptCopy:
    """On the node's disk with `state-dir` (a file survives a SuperNode restart), else in its state."""
    if "state-dir" in context.node_config:
        return kept_file(str(context.node_config["state-dir"]), config, partition_id(context))
    return ContextKept(context)


def kept_file(state_dir: str, config: RunConfig, client: int) -> KeptFile:
    return KeptFile(Path(state_dir) / config.name / f"kept-{client}.safetensors")


def node_run_config(context: Context) -> RunConfig:
    """The run's config with this node's own paths in place of the server's."""
    if RUN not in context.state:
        raise ZofedError("this SuperNode has not received the run's config; the server sends it before round 1")
    return config_for_node(str(context.state.config_records[RUN]["config"]), context.node_config, partition_id(context))


def config_for_node(run_config_json: str, node: Mapping[str, object], client: int) -> RunConfig:
    """The run's config (as the server sent it) with node config `model` and `data-path` in place of the server's."""
    raw = json.loads(run_config_json)
    if "model" in node:
        raw["model"] = str(node["model"])
    if "data-path" in node:
        raw["data"] = {**raw.get("data", {}), "path": str(node["data-path"])}
    config = parse_config(raw)
    if not 0 <= client < config.clients:
        raise ZofedError(f"partition-id {client} is outside the run's {config.clients} clients")
    return config


def cached_experiment(config: RunConfig, cache_key: str = "") -> tuple[Experiment, Algorithm, dict[str, float]]:
    """The process's experiment for this config (and `cache_key`), and what this call spent loading the model
    (wall and CPU seconds; CPU is what it costs on a core of its own, on a busy machine too)."""
    key = json.dumps(config.to_dict(), sort_keys=True) + cache_key
    if _CACHE and _CACHE[0][0] == key:
        return _CACHE[0][1], _CACHE[0][2], {"model_load_s": 0.0, "model_load_cpu_s": 0.0}
    _CACHE.clear()
    data = prepare_data(config)
    load_started, load_cpu_started = time.perf_counter(), time.process_time()
    model = build_model(config)
    model_load = {"model_load_s": time.perf_counter() - load_started, "model_load_cpu_s": time.process_time() - load_cpu_started}
    experiment = build_experiment(config, data, model)
    _CACHE.append((key, experiment, build_algorithm(config.algorithm, config.algorithm_settings)))
    return experiment, _CACHE[0][2], model_load


class TrackedKept(KeptInMemory):
    """A kept model's bytes from the node's Context state, handed to a warm worker (worker.py);
    `changed`: whether the round saved or forgot it, so the ClientApp puts it back."""

    changed = False

    def save_from(self, version: int, tensors) -> None:
        super().save_from(version, tensors)
        self.changed = True

    def forget(self) -> None:
        super().forget()
        self.changed = True
