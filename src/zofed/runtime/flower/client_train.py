"""The ClientApp's training message: the experiment, the client's kept model and its round.

Imported by `client_app.train` on a process's first training message, so a node's hello and
welcome never load torch, transformers or the model (see client_app's docstring).
"""

from __future__ import annotations

import time

_IMPORTS_STARTED, _IMPORTS_CPU_STARTED = time.time(), time.process_time()

import json  # noqa: E402
from collections.abc import MutableMapping  # noqa: E402
from pathlib import Path  # noqa: E402

from flwr.app import Context, Message  # noqa: E402

from zofed.algorithms import Algorithm, build_algorithm  # noqa: E402
from zofed.config import RunConfig, parse_config  # noqa: E402
from zofed.errors import ZofedError  # noqa: E402
from zofed.runtime.client import KeptCopy, KeptFile  # noqa: E402
from zofed.runtime.experiment import Experiment, build_experiment, build_model, prepare_data  # noqa: E402
from zofed.runtime.flower.records import RUN, ContextKept, pack, partition_id, unpack  # noqa: E402
from zofed.runtime.round import client_round  # noqa: E402

# This module's imports, reported once with the first training message (then emptied).
_IMPORT_COSTS = {"imports_s": time.time() - _IMPORTS_STARTED, "imports_cpu_s": time.process_time() - _IMPORTS_CPU_STARTED}

# One experiment per process: (config JSON, experiment, algorithm). A new config replaces it.
_CACHE: list[tuple[str, Experiment, Algorithm]] = []


def train(message: Message, context: Context, process_costs: MutableMapping[str, float]) -> Message:
    """One training message; `process_costs`: what the process paid before it, reported once and emptied."""
    client = partition_id(context)
    config = node_run_config(context)
    setup_started = time.perf_counter()
    experiment, algorithm, model_load = cached_experiment(config)
    setup_s = time.perf_counter() - setup_started
    uplink, measured = client_round(experiment, algorithm, client, unpack(message.content), kept_copy(context, config))
    runtime = {**measured, "setup_s": setup_s, **model_load, **unreported_costs(process_costs)}
    return Message(pack(uplink, runtime), reply_to=message)


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
        return KeptFile(Path(str(context.node_config["state-dir"])) / config.name / f"kept-{partition_id(context)}.safetensors")
    return ContextKept(context)


def node_run_config(context: Context) -> RunConfig:
    """The run's config with this node's own paths in place of the server's."""
    if RUN not in context.state:
        raise ZofedError("this SuperNode has not received the run's config; the server sends it before round 1")
    raw = json.loads(str(context.state.config_records[RUN]["config"]))
    node = context.node_config
    if "model" in node:
        raw["model"] = str(node["model"])
    if "data-path" in node:
        raw["data"] = {**raw.get("data", {}), "path": str(node["data-path"])}
    config = parse_config(raw)
    if not 0 <= partition_id(context) < config.clients:
        raise ZofedError(f"partition-id {partition_id(context)} is outside the run's {config.clients} clients")
    return config


def cached_experiment(config: RunConfig) -> tuple[Experiment, Algorithm, dict[str, float]]:
    """The process's experiment for this config, and what this call spent loading the model
    (wall and CPU seconds; CPU is what it costs on a core of its own, on a busy machine too)."""
    key = json.dumps(config.to_dict(), sort_keys=True)
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
