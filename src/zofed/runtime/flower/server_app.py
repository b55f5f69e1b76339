"""The ServerApp: the local runtime's run (init, configure, aggregate, evaluate, checkpoint) with
each round's messages carried to SuperNodes by a Flower Grid.

The server keeps the ledger as the local runtime does: the downlink bytes it encoded for each
client it sent to, and the uplink bytes as they arrived (`codec.sizes_of`). Replies are
aggregated in client order whatever order they arrive in, so a round is the same computation as
in the local runtime (bit-identical weights, tested).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.config import get_project_dir
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from zofed.algorithms import Algorithm, ServerState
from zofed.algorithms.downlink import forget_versions
from zofed.config import FlowerConfig, RunConfig, load_config, parse_config
from zofed.errors import ZofedError
from zofed.metrics import ByteLedger
from zofed.runtime.client import KeptModel
from zofed.runtime.codec import decode, encode_with_sizes, sizes_of
from zofed.runtime.experiment import Experiment
from zofed.runtime.flower.deployment import SUMMARY_LINE
from zofed.runtime.flower.records import NODE, RUN, pack, runtime_measurements, unpack
from zofed.runtime.flower.wire import SocketMeter, superlink_meter
from zofed.runtime.local import RoundFn, round_row, run_local

POLL_S = 0.5  # between looks for SuperNodes that have not appeared yet
PULL_S = 0.1  # between looks for replies (Flower's deployment Grid.send_and_receive waits 3 s between looks)


@dataclass(frozen=True)
class ServeOptions:
    config: RunConfig
    resume: bool = False
    overwrite: bool = False
    show_progress: bool = False


def make_server_app(options: ServeOptions) -> ServerApp:
    """A ServerApp bound to one run, for the simulation engine (which takes the app object)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, options)

    return server_app


# The deployment's ServerApp, loaded by `flwr run` from the app bundle; the run comes in the
# Flower run config: `config-json` when `zofed run ... runtime=flower` submits it, else the YAML
# file `config` plus `overrides` (`flwr run .` from the repository, see its pyproject.toml).
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    options = ServeOptions(
        config=submitted_config(run_config, lambda: app_dir(grid)),
        resume=bool(run_config.get("resume", False)),
        overwrite=bool(run_config.get("overwrite", False)),
    )
    summary = serve(grid, options)
    if summary is not None:
        print(SUMMARY_LINE + json.dumps(summary, allow_nan=True), flush=True)


def submitted_config(run_config: Mapping[str, object], bundle_dir: Callable[[], Path]) -> RunConfig:
    """The run's config from the Flower run config; a relative `config` path is inside the app bundle."""
    if run_config.get("config-json"):
        return parse_config(json.loads(str(run_config["config-json"])))
    if not run_config.get("config"):
        raise ZofedError("the Flower run config has neither config-json nor config; pass --run-config 'config=\"configs/quickstart.yaml\"'")
    path = Path(str(run_config["config"])).expanduser()
    return load_config(path if path.is_absolute() else bundle_dir() / path, str(run_config.get("overrides", "")).split())


def app_dir(grid: Grid) -> Path:
    """Where Flower unpacked this run's app bundle on the SuperLink's machine."""
    run = grid.run
    return get_project_dir(run.fab_id, run.fab_version, run.fab_hash)


def serve(grid: Grid, options: ServeOptions) -> dict | None:
    config = options.config
    nodes = Nodes(grid, config)
    nodes.wait_for(range(config.clients), config.flower.connect_timeout_s)
    meter = superlink_meter()  # under flower-sim the nodes are virtual: it sees Flower's own traffic only
    play_round = partial(flower_round, grid, nodes, config.flower, meter)
    if options.resume:
        play_round = _resync_first(play_round, range(config.clients))
    try:
        summary = run_local(
            config, resume=options.resume, overwrite=options.overwrite, show_progress=options.show_progress,
            play_round=play_round,
        )
    finally:
        if meter is not None:
            meter.stop()
    if summary is not None:
        summary = _add_flower_bytes(config, summary)
    return summary


def _add_flower_bytes(config: RunConfig, summary: dict) -> dict:
    """The run's Flower-encoded message bytes next to the codec's, in summary.json."""
    rows = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = {
        **summary,
        "flower_bytes_up": sum(row["flower_bytes_up"] for row in rows),
        "flower_bytes_down": sum(row["flower_bytes_down"] for row in rows),
    }
    measured = [row["superlink_tcp_bytes"] for row in rows if row.get("superlink_tcp_bytes")]
    if measured:  # deployment: what the SuperLink's sockets carried (see wire.py for what is counted)
        summary["superlink_tcp_bytes"] = {key: sum(row[key] for row in measured) for key in measured[0]}
    path = config.run_dir / "summary.json"
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    staging.replace(path)
    return summary


def flower_size(message: Message) -> int:
    """Bytes of a message as Flower serialises it for transfer: each object of its tree (message,
    records, arrays) once, as Flower pushes them; excludes the HTTP/TLS framing around them."""
    return sum(len(part.deflate()) for part in get_all_nested_objects(message).values())


def exchange(grid: Grid, messages: list[Message], timeout_s: float | None) -> list[Message]:
    """`Grid.send_and_receive`, looking for replies every PULL_S: the round ends when the last reply
    is in, not up to 3 s later (measured in benchmarks/flower_overhead.py)."""
    waiting = set(grid.push_messages(messages))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    replies: list[Message] = []
    while waiting:
        arrived = list(grid.pull_messages(list(waiting)))
        replies += arrived
        waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
        if not waiting or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(PULL_S)
    return replies


def _resync_first(play_round, clients) -> RoundFn:
    """A resumed session's first round sends every client the weights: nodes of the earlier session
    may have lost the models they kept (a node's Context state lives only as long as its run)."""
    first = True

    def play(experiment, algorithm, state, round, kept):
        nonlocal first
        if first:
            state, first = forget_versions(state, clients), False
        return play_round(experiment, algorithm, state, round, kept)

    return play


class Nodes:
    """Which SuperNode holds which client: learnt by a `query` that also hands each node the run's config."""

    def __init__(self, grid: Grid, config: RunConfig) -> None:
        self.grid = grid
        self.config_json = json.dumps(config.to_dict())
        self.timeout_s = config.flower.connect_timeout_s
        self.node_of: dict[int, int] = {}  # client -> node id
        self.client_of: dict[int, int] = {}  # node id -> client

    def refresh(self) -> None:
        """Greet every node not yet greeted (a new or restarted SuperNode)."""
        new = [node for node in self.grid.get_node_ids() if node not in self.client_of]
        if not new:
            return
        hellos = [
            Message(RecordDict({RUN: ConfigRecord({"config": self.config_json})}), dst_node_id=node, message_type=MessageType.QUERY)
            for node in new
        ]
        for reply in exchange(self.grid, hellos, self.timeout_s):
            if reply.has_error():
                continue
            node, client = reply.metadata.src_node_id, int(reply.content.config_records[NODE]["partition-id"])
            self.client_of.pop(self.node_of.get(client, -1), None)  # a restarted node replaces its old id
            self.node_of[client], self.client_of[node] = node, client

    def wait_for(self, clients, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        missing = set(clients)
        while True:
            self.refresh()
            missing -= set(self.node_of)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ZofedError(
                    f"no SuperNode answered for clients {sorted(missing)} within {timeout_s:.0f} s; start one per "
                    "client with `zofed flower supernode --partition-id K` (or raise flower.connect_timeout_s)"
                )
            time.sleep(POLL_S)


def flower_round(
    grid: Grid,
    nodes: Nodes,
    settings: FlowerConfig,
    meter: SocketMeter | None,
    experiment: Experiment,
    algorithm: Algorithm,
    state: ServerState,
    round: int,
    kept: dict[int, KeptModel],
) -> tuple[ServerState, dict]:
    """`local.run_round` with the clients on SuperNodes; a client that errs or misses the timeout is dropped."""
    round_started = time.perf_counter()
    wire_before = None
    if meter is not None:
        meter.sample()
        wire_before = meter.totals()
    nodes.refresh()
    clients = experiment.sample_clients(round)
    messages = algorithm.configure(state, round, clients)
    ledger = ByteLedger()
    outgoing, receivers, failures = [], [], {}
    for client, message in zip(clients, messages):
        if client not in nodes.node_of:
            failures[client] = "no SuperNode"
            continue
        downlink, down_sizes = encode_with_sizes(message)
        ledger.record(client, "down", down_sizes)
        node = nodes.node_of[client]
        outgoing.append(Message(pack(downlink), dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(round)))
        receivers.append(client)
    flower_down = sum(flower_size(message) for message in outgoing)
    arrived, flower_up = {}, 0
    exchange_started = time.perf_counter()
    answers = exchange(grid, outgoing, settings.timeout_s)
    exchange_s = time.perf_counter() - exchange_started  # the clients' work plus Flower's transport, polling, processes
    # Replies are matched to the message they answer: the SuperLink itself answers for a node that
    # went offline (its heartbeats stopped), from its own node id.
    client_of = {message.metadata.message_id: client for message, client in zip(outgoing, receivers)}
    for reply in answers:
        client = client_of.get(reply.metadata.reply_to_message_id)
        if client is None:
            continue
        flower_up += flower_size(reply)
        if reply.has_error():
            failures[client] = reply.error.reason or f"error code {reply.error.code}"
            continue
        arrived[client] = reply.content
    replies, per_client = [], []
    for client in sorted(arrived):  # the local runtime's order, whatever order they arrived in
        uplink = unpack(arrived[client])
        up_sizes = sizes_of(uplink)
        ledger.record(client, "up", up_sizes)
        reply = decode(uplink)
        replies.append((client, reply))
        per_client.append(
            {
                "client": client,
                **{key: float(value) for key, value in reply.metrics.items()},
                **runtime_measurements(arrived[client]),
                "bytes_up": up_sizes.total,
                "bytes_down": ledger.for_client(client, "down"),
            }
        )
    dropped = [client for client in clients if client not in arrived]
    for client in dropped:
        failures.setdefault(client, f"no reply within {settings.timeout_s} s")
    if len(replies) < min(settings.min_replies, len(clients)):
        raise ZofedError(
            f"round {round}: {len(replies)} of {len(clients)} clients replied, fewer than flower.min_replies="
            f"{settings.min_replies} ({'; '.join(f'client {c}: {failures[c]}' for c in dropped)}); "
            "fix the SuperNodes and continue with --resume"
        )
    state = algorithm.aggregate(state, round, replies)
    # A dropped client may have kept nothing or half a round: it gets the weights next time.
    state = forget_versions(state, dropped)
    wire = None
    if meter is not None:
        meter.sample()
        wire = {key: value - wire_before[key] for key, value in meter.totals().items()}
    experiment.view.load_(state.weights)
    row = round_row(experiment, round, clients, per_client, ledger, round_started)
    return state, {
        **row,
        "flower_bytes_up": flower_up,
        "flower_bytes_down": flower_down,
        "flower_exchange_s": exchange_s,
        "superlink_tcp_bytes": wire,
        "dropped": dropped,
        "dropped_reasons": {str(c): failures[c] for c in dropped},
    }
