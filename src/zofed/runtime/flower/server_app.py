"""The ServerApp: the run loop and the one round body (runtime/round.py) with each round's messages
carried to SuperNodes by a Flower Grid (`GridTransport`): replies are screened as in every runtime.

The server keeps the ledger as the local runtime does: the downlink bytes it encoded for each
client it sent to, and the uplink bytes as they arrived (`codec.sizes_of`). Replies are
aggregated in client order whatever order they arrive in, so a round is the same computation as
in the local runtime (bit-identical weights, tested).
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from flwr.app import Context, Message, MessageType
from flwr.common.config import get_project_dir
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from zofed.algorithms import ServerState
from zofed.algorithms.downlink import forget_versions
from zofed.atomic import write_atomic
from zofed.config import FlowerConfig, RunConfig, load_config, parse_config
from zofed.errors import ZofedError
from zofed.runtime.flower.deployment import SUMMARY_LINE
from zofed.runtime.flower.nodes import Nodes
from zofed.runtime.flower.records import pack, runtime_measurements, unpack
from zofed.runtime.flower.wire import SocketMeter, superlink_meter
from zofed.runtime.driver import RoundFn, round_rows, run_experiment, run_round
from zofed.runtime.round import Exchanged

PULL_S = 0.1  # between looks for replies (Flower's deployment Grid.send_and_receive waits 3 s between looks)


@dataclass(frozen=True)
class ServeOptions:
    config: RunConfig
    resume: bool = False
    overwrite: bool = False


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
    nodes = Nodes(grid, config, send_and_receive)
    nodes.wait_for(range(config.clients), config.flower.connect_timeout_s, at_least=config.flower.min_nodes)
    meter = superlink_meter()  # under flower-sim the nodes are virtual: it sees Flower's own traffic only
    round_fn = partial(run_round, transport=GridTransport(grid, nodes, config.flower, meter))
    if options.resume:
        round_fn = _resync_first(round_fn, range(config.clients))
    try:
        # no progress bar: the ServerApp runs in the SuperLink's process tree and its log is streamed
        summary = run_experiment(config, resume=options.resume, overwrite=options.overwrite, show_progress=False, round_fn=round_fn)
    finally:
        if meter is not None:
            meter.stop()
    if summary is not None:
        summary = _add_flower_bytes(config, summary)
    return summary


def _add_flower_bytes(config: RunConfig, summary: dict) -> dict:
    """The run's Flower-encoded message bytes next to the codec's, in summary.json."""
    rows = round_rows(config.run_dir)
    summary = {
        **summary,
        "flower_bytes_up": sum(row["flower_bytes_up"] for row in rows),
        "flower_bytes_down": sum(row["flower_bytes_down"] for row in rows),
    }
    measured = [row["superlink_tcp_bytes"] for row in rows if row.get("superlink_tcp_bytes")]
    if measured:  # deployment: what the SuperLink's sockets carried (see wire.py for what is counted)
        summary["superlink_tcp_bytes"] = {key: sum(row[key] for row in measured) for key in measured[0]}
    path = config.run_dir / "summary.json"
    write_atomic(path, json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return summary


def flower_size(message: Message) -> int:
    """Bytes of a message as Flower serialises it for transfer: each object of its tree (message,
    records, arrays) once, as Flower pushes them; excludes the HTTP/TLS framing around them."""
    return sum(len(part.deflate()) for part in get_all_nested_objects(message).values())


def send_and_receive(grid: Grid, messages: list[Message], timeout_s: float | None) -> list[Message]:
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


def _resync_first(round_fn: RoundFn, clients) -> RoundFn:
    """A resumed session's first round sends every client the weights: nodes of the earlier session
    may have lost the models they kept (a node's Context state lives only as long as its run)."""
    first = True

    def play(experiment, algorithm, state, round, kept):
        nonlocal first
        if first:
            state, first = forget_versions(state, clients), False
        return round_fn(experiment, algorithm, state, round, kept)

    return play


class GridTransport:
    """The round's exchange over a Flower Grid: one TRAIN message per client's SuperNode, replies matched
    to the messages they answer. A client with no node, one that errs or misses `flower.timeout_s`
    is dropped (and gets the weights next time: it may have kept nothing, or half a round)."""

    def __init__(self, grid: Grid, nodes: Nodes, settings: FlowerConfig, meter: SocketMeter | None) -> None:
        self.grid, self.nodes, self.settings, self.meter = grid, nodes, settings, meter

    def exchange(self, round: int, downlinks, state: ServerState) -> Exchanged:
        wire_before = None
        if self.meter is not None:
            self.meter.sample()
            wire_before = self.meter.totals()
        self.nodes.refresh()
        exchanged = Exchanged(measured_by_client=True)  # a node measures its own work
        outgoing, receivers = [], []
        for client, downlink in downlinks:
            if client not in self.nodes.node_of:
                exchanged.failures[client] = "no SuperNode"
                continue
            outgoing.append(Message(pack(downlink), dst_node_id=self.nodes.node_of[client],
                                    message_type=MessageType.TRAIN, group_id=str(round)))
            receivers.append(client)
        flower_down = sum(flower_size(message) for message in outgoing)
        flower_up = 0
        exchange_started = time.perf_counter()
        answers = send_and_receive(self.grid, outgoing, self.settings.timeout_s)
        exchange_s = time.perf_counter() - exchange_started  # the clients' work plus Flower's transport, polling, processes
        # Replies are matched to the message they answer: the SuperLink itself answers for a node that
        # went offline (its heartbeats stopped), from its own node id.
        client_of = {message.metadata.message_id: client for message, client in zip(outgoing, receivers)}
        for reply in answers:
            client = client_of.get(reply.metadata.reply_to_message_id)
            if client is None or client in exchanged.replies or client in exchanged.unreadable:
                continue
            flower_up += flower_size(reply)
            if reply.has_error():
                exchanged.failures[client] = reply.error.reason or f"error code {reply.error.code}"
                continue
            try:
                exchanged.replies[client] = unpack(reply.content)
            except (ZofedError, KeyError, TypeError, ValueError) as error:
                exchanged.unreadable[client] = f"no zofed message in the Flower reply ({str(error)[:200]})"
                exchanged.uncounted[client] = flower_size(reply)
                continue
            try:
                exchanged.measured[client] = runtime_measurements(reply.content)
            except (KeyError, TypeError, ValueError, struct.error):
                exchanged.measured[client] = {}  # the client's own timings: reported, never needed
        arrived = set(exchanged.replies) | set(exchanged.unreadable)
        for client, _ in downlinks:
            if client not in arrived:
                exchanged.failures.setdefault(client, f"no reply within {self.settings.timeout_s} s")
        exchanged.forget = sorted(exchanged.failures)
        if len(exchanged.replies) < min(self.settings.min_replies, len(downlinks)):
            raise ZofedError(
                f"round {round}: {len(exchanged.replies)} of {len(downlinks)} clients replied, fewer than "
                f"flower.min_replies={self.settings.min_replies} ("
                f"{'; '.join(f'client {c}: {why}' for c, why in sorted(exchanged.failures.items()))}); "
                "fix the SuperNodes and continue with --resume"
            )
        wire = None
        if self.meter is not None:
            self.meter.sample()
            wire = {key: value - wire_before[key] for key, value in self.meter.totals().items()}
        exchanged.row = {"flower_bytes_up": flower_up, "flower_bytes_down": flower_down,
                         "flower_exchange_s": exchange_s, "superlink_tcp_bytes": wire}
        return exchanged
