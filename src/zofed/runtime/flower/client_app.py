"""The ClientApp: a SuperNode runs `round.client_round` on the bytes the server sent.

The experiment (model, data, partitions) is built once per process and reused while the config
stays the same: a simulation's Ray worker serves every round from one copy; a deployment's
fresh ClientApp process per message pays it every time. Each client's metrics row says what the
message cost before training (`seconds`): `setup_s` = `model_load_s` (from the safetensors
cache, LoRA applied) + data preparation and tokenisation (~0 when cached); and, for the first
message a process serves, `process_start_s` (interpreter start, Flower's imports and pulling the
message, up to importing this module) and `imports_s` (this module's imports: torch,
transformers, zofed); `*_cpu_s`: the same in CPU seconds, the cost on an idle core. A simulation's worker pays those once; a deployment pays them per message.

Node config keys (`flower-supernode --node-config`, all optional except in deployment
`partition-id`): `partition-id` (the client id), `model` and `data-path` (node-local paths that
replace the config's), `state-dir` (keep the client's model in a file there, not in memory).
"""

from __future__ import annotations

import time

_IMPORTS_STARTED, _IMPORTS_CPU_STARTED = time.time(), time.process_time()

import json  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.typing import Mod  # noqa: E402

from zofed.algorithms import Algorithm, build_algorithm  # noqa: E402
from zofed.config import RunConfig, parse_config  # noqa: E402
from zofed.errors import ZofedError  # noqa: E402
from zofed.runtime.experiment import Experiment, build_experiment, build_model, prepare_data  # noqa: E402
from zofed.runtime.client import KeptCopy, KeptFile  # noqa: E402
from zofed.runtime.flower.records import NODE, RUN, ContextKept, pack, unpack  # noqa: E402
from zofed.runtime.round import client_round  # noqa: E402

# What this process paid before it could serve its first message, reported once (then emptied).
_PROCESS_COSTS = {
    "process_start_s": max(0.0, _IMPORTS_STARTED - psutil.Process().create_time()),
    "imports_s": time.time() - _IMPORTS_STARTED,
    "imports_cpu_s": time.process_time() - _IMPORTS_CPU_STARTED,  # what they cost on a core of their own
}

# One experiment per process: (config JSON, experiment, algorithm). A new config replaces it.
_CACHE: list[tuple[str, Experiment, Algorithm]] = []


def hello(message: Message, context: Context) -> Message:
    """Tell the server which client this node is; once it has bound the node to that client, it
    sends the run's config (what a client needs of it), kept in the node's state."""
    if RUN in message.content.config_records:
        context.state[RUN] = ConfigRecord({"config": str(message.content.config_records[RUN]["config"])})
    _PROCESS_COSTS.clear()  # paid before the run's rounds, not by the first round's message
    return Message(RecordDict({NODE: ConfigRecord({"partition-id": partition_id(context)})}), reply_to=message)


def train(message: Message, context: Context) -> Message:
    client = partition_id(context)
    config = node_run_config(context)
    setup_started = time.perf_counter()
    experiment, algorithm, model_load = cached_experiment(config)
    setup_s = time.perf_counter() - setup_started
    uplink, measured = client_round(experiment, algorithm, client, unpack(message.content), kept_copy(context, config))
    runtime = {**measured, "setup_s": setup_s, **model_load, **_PROCESS_COSTS}
    _PROCESS_COSTS.clear()
    return Message(pack(uplink, runtime), reply_to=message)


def build_client_app(train_mods: Sequence[Mod] = ()) -> ClientApp:
    """zofed's ClientApp; `train_mods` wrap its train handler (Flower mods: tests and benchmarks play
    hostile clients by replacing the honest reply on the client side of the transport)."""
    client_app = ClientApp()
    client_app.query()(hello)
    client_app.train(mods=list(train_mods))(train)
    return client_app


app = build_client_app()


def kept_copy(context: Context, config: RunConfig) -> KeptCopy:
    """On the node's disk with `state-dir` (a file survives a SuperNode restart), else in its state."""
    if "state-dir" in context.node_config:
        return KeptFile(Path(str(context.node_config["state-dir"])) / config.name / f"kept-{partition_id(context)}.safetensors")
    return ContextKept(context)


def partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ZofedError("this SuperNode has no partition-id; start it with --node-config 'partition-id=K'")
    value = context.node_config["partition-id"]
    if type(value) is not int or value < 0:
        raise ZofedError(f"partition-id {str(value)[:40]!r} is not a client number; start the SuperNode with "
                         "--node-config 'partition-id=K' for a whole number K")
    return value


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
