"""The ClientApp: a SuperNode runs `round.client_round` on the bytes the server sent.

This module holds what every message needs and imports only Flower: a deployment's SuperNode
starts a fresh ClientApp process per message, and the node's hello and welcome (which client it
is, the run's config) need neither torch nor the model. Training messages import
`client_train` (torch, transformers, the experiment) on first use.

The experiment (model, data, partitions) is built once per process and reused while the config
stays the same: a simulation's Ray worker serves every round from one copy; a deployment's
fresh ClientApp process per message would pay it every time, so a warm node (node config
`worker-idle-s`, the default of `zofed flower supernode`) hands training messages to its
long-lived worker process instead (worker.py), which holds the experiment across rounds. Each client's metrics row says what the
message cost before training (`seconds`): `setup_s` = `model_load_s` (from the safetensors
cache, LoRA applied) + data preparation and tokenisation (~0 when cached); and, for the first
message a process serves, `process_start_s` (interpreter start, Flower's imports and pulling the
message, up to importing this module) and `imports_s` (this module's imports and, on the first
training message, `client_train`'s: torch, transformers, zofed); `*_cpu_s`: the same in CPU
seconds, the cost on an idle core. A simulation's worker pays those once; a deployment pays them per message.

Node config keys (`flower-supernode --node-config`, all optional except in deployment
`partition-id`): `partition-id` (the client id), `model` and `data-path` (node-local paths that
replace the config's), `state-dir` (keep the client's model in a file there, not in memory),
`worker-idle-s` (warm: train in the node's worker, which exits after this many idle seconds) and
`worker-dir` (where the worker's private folder goes; default the system temp directory).
"""

from __future__ import annotations

import time

_IMPORTS_STARTED, _IMPORTS_CPU_STARTED = time.time(), time.process_time()

from collections.abc import Sequence  # noqa: E402

import psutil  # noqa: E402

from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.typing import Mod  # noqa: E402

from zofed.runtime.flower.records import NODE, RUN, partition_id  # noqa: E402

# What this process paid before it could serve its first message, reported once (then emptied).
_PROCESS_COSTS = {
    "process_start_s": max(0.0, _IMPORTS_STARTED - psutil.Process().create_time()),
    "imports_s": time.time() - _IMPORTS_STARTED,
    "imports_cpu_s": time.process_time() - _IMPORTS_CPU_STARTED,  # what they cost on a core of their own
}


def hello(message: Message, context: Context) -> Message:
    """Tell the server which client this node is; once it has bound the node to that client, it
    sends the run's config (what a client needs of it), kept in the node's state."""
    if RUN in message.content.config_records:
        welcome = message.content.config_records[RUN]
        context.state[RUN] = ConfigRecord({"config": str(welcome["config"]),
                                           **({"timeout_s": float(welcome["timeout_s"])} if "timeout_s" in welcome else {})})
    _PROCESS_COSTS.clear()  # paid before the run's rounds, not by the first round's message
    return Message(RecordDict({NODE: ConfigRecord({"partition-id": partition_id(context)})}), reply_to=message)


def train(message: Message, context: Context) -> Message:
    if "worker-idle-s" in context.node_config:  # a warm node: its worker holds the model (worker.py)
        from zofed.runtime.flower import worker

        return worker.train(message, context, _PROCESS_COSTS)
    from zofed.runtime.flower import client_train  # first training message only: see the module docstring

    return client_train.train(message, context, _PROCESS_COSTS)


def build_client_app(train_mods: Sequence[Mod] = ()) -> ClientApp:
    """zofed's ClientApp; `train_mods` wrap its train handler (Flower mods: tests and benchmarks play
    hostile clients by replacing the honest reply on the client side of the transport)."""
    client_app = ClientApp()
    client_app.query()(hello)
    client_app.train(mods=list(train_mods))(train)
    return client_app


app = build_client_app()

