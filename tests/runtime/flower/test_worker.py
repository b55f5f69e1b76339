"""A warm node's worker (runtime/flower/worker.py), without starting Flower: zofed's real ClientApp train
handler runs each client's messages with its own node config and Context, handing them to real worker
processes. A real deployment with a warm and a cold node runs in test_equivalence.py."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from functools import partial

import psutil
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from zofed.errors import ZofedError  # noqa: E402
from zofed.runtime.driver import run_experiment, run_round  # noqa: E402
from zofed.runtime.flower import worker  # noqa: E402
from zofed.runtime.flower.client_app import train  # noqa: E402
from zofed.runtime.flower.records import RUN, pack, runtime_measurements, unpack  # noqa: E402
from zofed.runtime.round import Exchanged  # noqa: E402

from ..helpers import final_weights, tiny_config  # noqa: E402

SMALL = ("rounds=3", "local.local_steps=2", "eval.val_examples=4", "eval.test_examples=4", "eval.accuracy_examples=0",
         "fedmezo.upload=seeds", "fedmezo.downlink=replay")


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower messages need the identity of the task that builds them, as in a ClientApp process."""
    for name, value in (("_task_id", 1), ("_run_id", 7), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def nodes(tmp_path):
    """Each client's node config and Context, warm with a worker folder under tmp_path; every worker stopped after."""
    made: dict[int, Context] = {}

    def node(client: int, run_id: int = 7, **extra) -> Context:
        config = {"partition-id": client, "worker-idle-s": 60.0, "worker-dir": str(tmp_path / "workers"), **extra}
        made[client] = Context(run_id=run_id, node_id=100 + client, node_config=config, state=RecordDict(), run_config={})
        return made[client]

    yield node
    for folder in (tmp_path / "workers").glob("node-*"):
        worker.stop_worker(folder)


class HandlerTransport:
    """The round's exchange through zofed's ClientApp train handler, one Context per client (as its SuperNode holds)."""

    def __init__(self, contexts: dict[int, Context], config_json: str) -> None:
        self.contexts = contexts
        for context in contexts.values():
            context.state[RUN] = ConfigRecord({"config": config_json})

    def exchange(self, round, downlinks, state) -> Exchanged:
        exchanged = Exchanged(measured_by_client=True)
        for client, downlink in downlinks:
            message = Message(pack(downlink), dst_node_id=100 + client, message_type=MessageType.TRAIN, group_id=str(round))
            reply = train(message, self.contexts[client])
            exchanged.replies[client] = unpack(reply.content)
            exchanged.measured[client] = runtime_measurements(reply.content)
        return exchanged


def rows(config) -> list[dict]:
    return [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]


def folder_of(tmp_path, context: Context):
    [folder] = (tmp_path / "workers").glob(f"node-{context.node_id}-*")
    return folder


def worker_process(folder) -> psutil.Process:
    return psutil.Process(int((folder / "pid").read_text()))


def one_message(context: Context, config, round_downlink: bytes) -> dict:
    message = Message(pack(round_downlink), dst_node_id=context.node_id, message_type=MessageType.TRAIN, group_id="1")
    return runtime_measurements(train(message, context).content)


def test_warm_workers_keep_the_model_across_rounds_and_match_the_local_run_bit_for_bit(tmp_path, nodes):
    local = tiny_config(tmp_path / "local", "fedmezo", *SMALL)
    run_experiment(local, show_progress=False)
    warm = tiny_config(tmp_path / "warm", "fedmezo", *SMALL)
    contexts = {0: nodes(0), 1: nodes(1, **{"state-dir": str(tmp_path / "node-1")})}  # kept in Context state / a file
    transport = HandlerTransport(contexts, json.dumps(warm.to_dict()))
    run_experiment(warm, show_progress=False, round_fn=partial(run_round, transport=transport))
    reference, served = final_weights(local), final_weights(warm)
    assert reference.keys() == served.keys() and all(torch.equal(reference[name], served[name]) for name in reference)
    assert [row["train_loss"] for row in rows(warm)] == [row["train_loss"] for row in rows(local)]
    per_round = [{c["client"]: c for c in row["per_client"]} for row in rows(warm)]
    assert per_round[1][0]["bytes_down"] < per_round[0][0]["bytes_down"]  # replayed: the kept model came back
    for client in (0, 1):
        first, later = per_round[0][client], [row[client] for row in per_round[1:]]
        assert first["worker_start_s"] > 0 and first["model_load_s"] > 0  # the first message starts the worker
        assert all(c["worker_start_s"] == 0 and c["model_load_s"] == 0 for c in later)  # then it is warm
    assert "kept" not in str(list(contexts[1].state.keys()))  # a state-dir node keeps its model on disk
    assert list((tmp_path / "node-1").rglob("kept-1.safetensors"))
    folder = folder_of(tmp_path, contexts[0])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE((folder / "authkey").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700


def test_a_changed_config_run_or_model_file_reloads_and_a_killed_worker_is_restarted(tmp_path, nodes):
    context = nodes(0)
    downlinks = {}

    class Recording(HandlerTransport):
        def exchange(self, round, downlinks_, state):
            downlinks.update(downlinks_)
            return super().exchange(round, downlinks_, state)

    one_round = tiny_config(tmp_path, "fedmezo", *SMALL, "rounds=1", "clients=1")
    run_experiment(one_round, show_progress=False,
                   round_fn=partial(run_round, transport=Recording({0: context}, json.dumps(one_round.to_dict()))))
    downlink, folder = downlinks[0], folder_of(tmp_path, context)
    first_worker = worker_process(folder)
    assert one_message(context, one_round, downlink)["model_load_s"] == 0  # the same run and config: warm

    changed = tiny_config(tmp_path, "fedmezo", *SMALL, "rounds=1", "clients=1", "fedmezo.lr=0.004")
    context.state[RUN] = ConfigRecord({"config": json.dumps(changed.to_dict())})
    assert one_message(context, changed, downlink)["model_load_s"] > 0  # a new config: never the stale experiment
    assert one_message(context, changed, downlink)["model_load_s"] == 0
    next_run = nodes(0, run_id=8)
    next_run.state[RUN] = ConfigRecord({"config": json.dumps(changed.to_dict())})
    assert one_message(next_run, changed, downlink)["model_load_s"] > 0  # a new run id: a fresh entry
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus 1?", "answer": f"{i} + 1\n#### {i + 1}"}) + "\n"
                            for i in range(60)))
    with_file = tiny_config(tmp_path, "fedmezo", *SMALL, "rounds=1", "clients=1", "task=gsm8k", f"data.path={data}",
                            "data.limit=60", "data.val_size=4", "data.test_size=4")
    next_run.state[RUN] = ConfigRecord({"config": json.dumps(with_file.to_dict())})
    assert one_message(next_run, with_file, downlink)["model_load_s"] > 0
    assert one_message(next_run, with_file, downlink)["model_load_s"] == 0
    os.utime(data, ns=(time.time_ns(), time.time_ns() + 10**9))  # the same path, rewritten
    assert one_message(next_run, with_file, downlink)["model_load_s"] > 0
    assert worker_process(folder).pid == first_worker.pid  # one worker served all of it

    first_worker.send_signal(signal.SIGKILL)
    first_worker.wait(10)
    measured = one_message(next_run, with_file, downlink)  # the next message starts a fresh worker
    assert measured["worker_start_s"] > 0 and measured["model_load_s"] > 0
    assert worker_process(folder).pid != first_worker.pid


def test_a_worker_answers_errors_and_exits_when_idle_or_when_its_supernode_is_gone(tmp_path, nodes, monkeypatch):
    config = tiny_config(tmp_path, "fedmezo", *SMALL)
    stand_in = subprocess.Popen(["sleep", "600"])  # plays the SuperNode the worker watches
    monkeypatch.setattr(worker, "supernode_pid", lambda: stand_in.pid)
    try:
        context = nodes(0)
        context.state[RUN] = ConfigRecord({"config": json.dumps(config.to_dict())})
        with pytest.raises(ZofedError, match="warm worker: .*decode|warm worker: .*message"):
            one_message(context, config, b"not a zofed message")  # answered as an error; the worker lives on
        folder = folder_of(tmp_path, context)
        alive = worker_process(folder)
        assert alive.is_running()
        stand_in.terminate()
        stand_in.wait()
        alive.wait(10)  # its SuperNode is gone: it exits, its socket removed
        assert not (folder / "worker.sock").exists()

        idle = nodes(1, **{"worker-idle-s": 1.0})
        idle.state[RUN] = ConfigRecord({"config": json.dumps(config.to_dict())})
        stand_in = subprocess.Popen(["sleep", "600"])
        with pytest.raises(ZofedError):
            one_message(idle, config, b"not a zofed message")
        worker_process(folder_of(tmp_path, idle)).wait(15)  # idle for a second: gone
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_worker_folder_that_is_not_private_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(ZofedError, match="not a directory private"):
        worker.private_folder(shared)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(ZofedError, match="not a directory private"):
        worker.private_folder(tmp_path / "link")
    assert worker.private_folder(tmp_path / "mine") == tmp_path / "mine"
    assert stat.S_IMODE((tmp_path / "mine").stat().st_mode) == 0o700
