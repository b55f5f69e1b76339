"""Which SuperNode plays which client: the server binds each partition to one node id.

A node answers the server's hello with the partition its operator gave it (`partition-id` in its
node config). The server binds that partition to the node's id, which the SuperLink
authenticated when SuperNode authentication is on, for as long as the node stays online: a second
node claiming a bound partition is refused (until the first goes offline, as a restarted node's
old id does), and so is a claim that is not one of this run's partitions or not a number at
all; neither stops a round. Only then does a node receive the run's config, and only what a client
needs (`client_config`): no fault injection or robust-aggregation settings, no server paths.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from zofed.config import RunConfig
from zofed.errors import ZofedError
from zofed.runtime.flower.records import NODE, RUN

POLL_S = 0.5  # between looks for SuperNodes that have not appeared yet
# Keys of the run config a client never needs: the server's own paths and address, its defences
# and the faults it injects for tests (which a client must not learn, or it could evade them).
SERVER_ONLY_KEYS = ("output_dir", "superlink", "flower", "robust", "faults")

# (grid, messages, timeout_s) -> replies
Exchange = Callable[[Grid, list[Message], float | None], list[Message]]


def client_config(config: RunConfig) -> dict:
    """The run's config as a client receives it."""
    return {key: value for key, value in config.to_dict().items() if key not in SERVER_ONLY_KEYS}


def claimed_partition(reply: Message, clients: int) -> int | str:
    """The partition a hello reply claims, or why the claim is refused."""
    if reply.has_error():
        return f"its hello failed: {reply.error.reason or f'error code {reply.error.code}'}"
    record = reply.content.config_records.get(NODE)
    claim = record.get("partition-id") if record is not None else None
    if type(claim) is not int or not 0 <= claim < clients:
        return f"it claims partition {str(claim)[:40]!r}, not one of this run's {clients} clients"
    return claim


class Nodes:
    """The binding of clients to node ids, learnt by greeting each node that comes online."""

    def __init__(self, grid: Grid, config: RunConfig, exchange: Exchange, warn=None) -> None:
        self.grid = grid
        self.clients = config.clients
        self.config_json = json.dumps(client_config(config))
        self.timeout_s = config.flower.connect_timeout_s
        self.answer_timeout_s = config.flower.timeout_s
        self.exchange = exchange
        self.warn = warn or (lambda line: print(f"zofed: warning: {line}", file=sys.stderr, flush=True))
        self.node_of: dict[int, int] = {}  # client -> node id
        self.client_of: dict[int, int] = {}  # node id -> client
        # node id -> the partition it claimed while another node held it, or None for a malformed claim
        self.refused: dict[int, int | None] = {}

    def refresh(self) -> None:
        """Free the partitions of nodes gone offline; greet nodes not yet bound, and send the newly bound the config."""
        online = set(self.grid.get_node_ids())
        for node in [node for node in self.client_of if node not in online]:
            del self.node_of[self.client_of.pop(node)]
        waiting = [node for node in sorted(online) if node not in self.client_of
                   and (node not in self.refused or _free(self.refused[node], self.node_of))]
        if not waiting:
            return
        hellos = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in waiting]
        bound = []
        for reply in self.exchange(self.grid, hellos, self.timeout_s):
            node, claim = reply.metadata.src_node_id, claimed_partition(reply, self.clients)
            if node not in waiting:
                continue  # the SuperLink answering for a node that went offline
            if isinstance(claim, str):
                self._refuse(node, None, claim)
            elif claim in self.node_of:
                self._refuse(node, claim, f"it claims partition {claim}, which node {self.node_of[claim]} holds")
            else:
                self.node_of[claim], self.client_of[node] = node, claim
                self.refused.pop(node, None)
                bound.append(node)
        if bound:
            self._send_config(bound)

    def _refuse(self, node: int, claim: int | None, why: str) -> None:
        if node not in self.refused:
            self.warn(f"SuperNode {node} refused: {why}")
        self.refused[node] = claim

    def _send_config(self, nodes: list[int]) -> None:
        """The run's config, to identified nodes only; a node that fails to take it is unbound."""
        # flower.timeout_s too (the rest of `flower` is the server's): a warm node's ClientApp waits no longer for its worker.
        answer_within = {"timeout_s": float(self.answer_timeout_s)} if self.answer_timeout_s else {}
        welcomes = [
            Message(RecordDict({RUN: ConfigRecord({"config": self.config_json, **answer_within})}), dst_node_id=node,
                    message_type=MessageType.QUERY)
            for node in nodes
        ]
        accepted = {reply.metadata.src_node_id for reply in self.exchange(self.grid, welcomes, self.timeout_s)
                    if not reply.has_error()}
        for node in set(nodes) - accepted:
            del self.node_of[self.client_of.pop(node)]

    def wait_for(self, clients, timeout_s: float, at_least: int | None = None) -> None:
        """Until every one of `clients` has a node, or `at_least` of them do (the others may join later: each
        round's refresh greets them)."""
        clients = set(clients)
        needed = len(clients) if at_least is None else min(at_least, len(clients))
        deadline = time.monotonic() + timeout_s
        while True:
            self.refresh()
            missing = clients - set(self.node_of)
            if len(clients) - len(missing) >= needed:
                return
            if time.monotonic() > deadline:
                raise ZofedError(
                    f"no SuperNode answered for clients {sorted(missing)} within {timeout_s:.0f} s ({needed} of "
                    f"{len(clients)} needed before round 1); start one per client with `zofed flower supernode "
                    "--partition-id K` (or raise flower.connect_timeout_s, or lower flower.min_nodes)"
                )
            time.sleep(POLL_S)


def _free(claim: int | None, node_of: dict[int, int]) -> bool:
    return claim is not None and claim not in node_of
