"""The server's binding of partitions to SuperNode ids, without starting Flower: a fake Grid whose
nodes answer with zofed's real ClientApp query handler, each with its own node config and state. A real
deployment with a second SuperNode for a taken partition runs in test_app.py (the `flwr run` test's deployment)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from zofed.config import parse_config  # noqa: E402
from zofed.errors import ZofedError  # noqa: E402
from zofed.runtime.flower.client_app import hello  # noqa: E402
from zofed.runtime.flower.client_train import node_run_config  # noqa: E402
from zofed.runtime.flower.nodes import SERVER_ONLY_KEYS, Nodes, client_config  # noqa: E402
from zofed.runtime.flower.records import NODE, RUN  # noqa: E402

CONFIG = parse_config({
    "clients": 3, "output_dir": "/srv/zofed/runs", "superlink": "10.0.0.1:9093",
    "flower": {"root_certificates": "/etc/zofed/ca.crt", "connect_timeout_s": 1},
    "faults": {"hostile_clients": [2]}, "robust": {"norm_bound": 1.0},
})


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower messages need the identity of the task that builds them, as in a ServerApp process."""
    for name, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class FakeGrid:
    """SuperNodes by id: each a node config, a Context, and whether it answers or is online."""

    def __init__(self) -> None:
        self.contexts: dict[int, Context] = {}
        self.online: set[int] = set()
        self.received: dict[int, list[Message]] = {}
        self.handler = hello

    def add(self, node: int, **node_config) -> Context:
        self.contexts[node] = Context(run_id=7, node_id=node, node_config=node_config, state=RecordDict(), run_config={})
        self.online.add(node)
        self.received[node] = []
        return self.contexts[node]

    def get_node_ids(self):
        return sorted(self.online)

    def exchange(self, grid, messages, timeout_s):
        assert grid is self
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.received[node].append(message)
            try:
                reply = self.handler(message, self.contexts[node])
            except Exception as error:  # what Flower does with a ClientApp that raises: an error reply
                reply = Message(Error(code=0, reason=f"{type(error).__name__}: {error}"), reply_to=message)
            replies.append(reply)
        return replies


def nodes_on(grid: FakeGrid) -> tuple[Nodes, list[str]]:
    warnings = []
    return Nodes(grid, CONFIG, grid.exchange, warn=warnings.append), warnings


def test_each_partition_is_bound_to_the_first_node_claiming_it():
    grid = FakeGrid()
    for node, partition in ((11, 0), (12, 1), (13, 2)):
        grid.add(node, **{"partition-id": partition})
    nodes, warnings = nodes_on(grid)
    nodes.wait_for(range(3), 1)
    assert nodes.node_of == {0: 11, 1: 12, 2: 13} and warnings == []

    impostor = grid.add(99, **{"partition-id": 1})
    nodes.refresh()
    nodes.refresh()  # asked once, warned once
    assert nodes.node_of[1] == 12 and 99 not in nodes.client_of
    assert len(warnings) == 1 and "SuperNode 99" in warnings[0] and "node 12 holds" in warnings[0]
    assert len(grid.received[99]) == 1  # the hello only: the run's config never reached it
    assert RUN not in impostor.state.config_records


def test_a_partition_is_free_again_once_its_node_goes_offline():
    grid = FakeGrid()
    grid.add(11, **{"partition-id": 0})
    nodes, _ = nodes_on(grid)
    nodes.refresh()
    grid.add(21, **{"partition-id": 0})  # a restarted node, before the old id is seen offline
    nodes.refresh()
    assert nodes.node_of == {0: 11}
    grid.online.discard(11)
    nodes.refresh()
    assert nodes.node_of == {0: 21} and nodes.client_of == {21: 0}
    assert RUN in grid.contexts[21].state.config_records


@pytest.mark.parametrize("node_config", [
    {}, {"partition-id": "one"}, {"partition-id": -1}, {"partition-id": 3}, {"partition-id": 1.5},
])
def test_malformed_claims_are_refused_without_stopping_the_round(node_config):
    grid = FakeGrid()
    grid.add(11, **{"partition-id": 0})
    grid.add(50, **node_config)
    nodes, warnings = nodes_on(grid)
    nodes.refresh()
    assert nodes.node_of == {0: 11} and 50 not in nodes.client_of
    assert len(warnings) == 1 and "SuperNode 50 refused" in warnings[0]
    assert all(RUN not in message.content.config_records for message in grid.received[50])


@pytest.mark.parametrize("answer", [
    RecordDict(),  # no claim at all
    RecordDict({NODE: ConfigRecord({"partition-id": True})}),  # a bool is not a partition
    RecordDict({NODE: ConfigRecord({"partition-id": "0"})}),
    RecordDict({NODE: ConfigRecord({"partition-id": 2**62})}),
])
def test_hostile_hello_replies_are_refused(answer):
    grid = FakeGrid()
    grid.add(11, **{"partition-id": 0})
    grid.handler = lambda message, context: Message(answer, reply_to=message)
    nodes, warnings = nodes_on(grid)
    nodes.refresh()
    assert nodes.node_of == {} and len(warnings) == 1


def test_the_run_config_reaches_only_identified_nodes_and_holds_what_a_client_needs():
    grid = FakeGrid()
    context = grid.add(11, **{"partition-id": 0})
    nodes, _ = nodes_on(grid)
    nodes.refresh()
    hello_message, welcome = grid.received[11]
    assert RUN not in hello_message.content.config_records  # before it said who it is
    sent = json.loads(str(welcome.content.config_records[RUN]["config"]))
    assert not set(SERVER_ONLY_KEYS) & set(sent)
    text = json.dumps(sent)
    for secret in ("/srv/zofed", "/etc/zofed", "10.0.0.1", "hostile_clients", "norm_bound"):
        assert secret not in text
    # what a client needs is all there: the node trains the same experiment as the server
    config = node_run_config(context)
    for key in ("model", "task", "seed", "clients", "data", "partition", "local", "trainable", "algorithm", "fedmezo"):
        assert config.to_dict()[key] == CONFIG.to_dict()[key], key
    assert client_config(CONFIG) == sent


def test_a_node_that_fails_to_take_the_config_is_not_bound():
    grid = FakeGrid()
    grid.add(11, **{"partition-id": 0})

    def fails_on_config(message, context):
        if RUN in message.content.config_records:
            raise ZofedError("disk full")
        return hello(message, context)

    grid.handler = fails_on_config
    nodes, _ = nodes_on(grid)
    nodes.refresh()
    assert nodes.node_of == {} and nodes.client_of == {}


def test_min_nodes_starts_with_some_clients_and_a_late_node_is_bound_by_the_next_refresh():
    grid = FakeGrid()
    grid.add(11, **{"partition-id": 0})
    grid.add(12, **{"partition-id": 1})
    nodes, _ = nodes_on(grid)
    with pytest.raises(ZofedError, match=r"clients \[2\].*3 of 3 needed.*flower.min_nodes"):
        nodes.wait_for(range(3), 0.01, at_least=3)
    nodes.wait_for(range(3), 0.01, at_least=2)  # returns at once: two of three are enough
    assert nodes.node_of == {0: 11, 1: 12}
    grid.add(13, **{"partition-id": 2})  # joins after round 1 started
    nodes.refresh()
    assert nodes.node_of == {0: 11, 1: 12, 2: 13} and RUN in grid.contexts[13].state.config_records
    with pytest.raises(ZofedError, match="min_nodes=4 exceeds clients=3"):
        parse_config({"clients": 3, "flower": {"min_nodes": 4}})
