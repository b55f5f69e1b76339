"""The ClientApp: a SuperNode runs `local.client_round` on the bytes the server sent.

The experiment (model, data, partitions) is built once per process and reused while the config
stays the same: a simulation's Ray worker serves every round from one copy; a deployment's
fresh ClientApp process per message pays it every time: `setup_s` in each client's metrics row is
that cost (model load from the safetensors cache plus data preparation and tokenisation; ~0
when cached).

Node config keys (`flower-supernode --node-config`, all optional except in deployment
`partition-id`): `partition-id` (the client id), `model` and `data-path` (node-local paths that
replace the config's), `state-dir` (keep the client's model in a file there, not in memory).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from zofed.algorithms import Algorithm, build_algorithm
from zofed.config import RunConfig, parse_config
from zofed.errors import ZofedError
from zofed.runtime.experiment import Experiment, build_experiment
from zofed.runtime.flower.records import NODE, RUN, ContextKeptStore, FileKeptStore, pack, unpack
from zofed.runtime.local import client_round

app = ClientApp()

# One experiment per process: (config JSON, experiment, algorithm). A new config replaces it.
_CACHE: list[tuple[str, Experiment, Algorithm]] = []


@app.query()
def hello(message: Message, context: Context) -> Message:
    """Keep the run's config in the node's state and tell the server which client this node is."""
    context.state[RUN] = ConfigRecord({"config": str(message.content.config_records[RUN]["config"])})
    return Message(RecordDict({NODE: ConfigRecord({"partition-id": partition_id(context)})}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    client = partition_id(context)
    config = node_run_config(context)
    setup_started = time.perf_counter()
    experiment, algorithm = cached_experiment(config)
    setup_s = time.perf_counter() - setup_started
    store = kept_store(context, config)
    uplink, row, kept = client_round(experiment, algorithm, client, unpack(message.content), store.load(client))
    store.save(client, kept)
    runtime = {"seconds": row["seconds"], "peak_rss_mb": row["peak_rss_mb"], "setup_s": setup_s}
    return Message(pack(uplink, runtime), reply_to=message)


def kept_store(context: Context, config: RunConfig) -> FileKeptStore | ContextKeptStore:
    if "state-dir" in context.node_config:
        return FileKeptStore(Path(str(context.node_config["state-dir"])) / config.name)
    return ContextKeptStore(context)


def partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ZofedError("this SuperNode has no partition-id; start it with --node-config 'partition-id=K'")
    return int(context.node_config["partition-id"])


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


def cached_experiment(config: RunConfig) -> tuple[Experiment, Algorithm]:
    key = json.dumps(config.to_dict(), sort_keys=True)
    if not _CACHE or _CACHE[0][0] != key:
        _CACHE.clear()
        experiment = build_experiment(config)
        _CACHE.append((key, experiment, build_algorithm(config.algorithm, config.algorithm_settings)))
    _, experiment, algorithm = _CACHE[0]
    return experiment, algorithm
