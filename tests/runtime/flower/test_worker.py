"""A warm node's worker (runtime/flower/worker.py), without starting Flower: zofed's real ClientApp train
handler runs each client's messages with its own node config and Context, handing them to real worker
processes. A real deployment with a warm and a cold node runs in test_equivalence.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import psutil
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from zofed.errors import ZofedError  # noqa: E402
from zofed.runtime.driver import round_rows, run_experiment, run_round  # noqa: E402
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
def workers():
    """A short folder for the workers' sockets (a Unix socket's path is at most 107 bytes; tmp_path's can be longer)."""
    folder = Path(tempfile.mkdtemp(prefix="zw-")) / "w"
    yield folder
    for node in folder.glob("node-*"):
        worker.stop_worker(node)
    shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture
def nodes(workers):
    """Each client's node config and Context, warm with a worker folder in `workers`."""

    def node(client: int, run_id: int = 7, **extra) -> Context:
        config = {"partition-id": client, "worker-idle-s": 60.0, "worker-dir": str(workers), **extra}
        return Context(run_id=run_id, node_id=100 + client, node_config=config, state=RecordDict(), run_config={})

    return node


class HandlerTransport:
    """The round's exchange through zofed's ClientApp train handler, one Context per client (as its SuperNode
    holds), given the run's config as the server's welcome would; records the downlinks."""

    def __init__(self, contexts: dict[int, Context], config) -> None:
        self.contexts, self.downlinks = contexts, {}
        for context in contexts.values():
            context.state[RUN] = ConfigRecord({"config": json.dumps(config.to_dict())})

    def exchange(self, round, downlinks, state) -> Exchanged:
        exchanged = Exchanged(measured_by_client=True)
        for client, downlink in downlinks:
            self.downlinks[client] = downlink
            message = Message(pack(downlink), dst_node_id=100 + client, message_type=MessageType.TRAIN, group_id=str(round))
            reply = train(message, self.contexts[client])
            exchanged.replies[client] = unpack(reply.content)
            exchanged.measured[client] = runtime_measurements(reply.content)
        return exchanged


def rows(config) -> list[dict]:
    return round_rows(config.run_dir)


def folder_of(workers, context: Context):
    [folder] = workers.glob(f"node-{context.node_id}-*")
    return folder


def worker_process(folder) -> psutil.Process:
    return psutil.Process(int((folder / "pid").read_text()))


def one_message(context: Context, round_downlink: bytes) -> dict:
    message = Message(pack(round_downlink), dst_node_id=context.node_id, message_type=MessageType.TRAIN, group_id="1")
    return runtime_measurements(train(message, context).content)


def test_a_warm_worker_keeps_the_model_across_rounds_and_matches_the_local_run_bit_for_bit(tmp_path, nodes, workers):
    """One node with a state-dir (a warm node keeping its model in its Context state: test_equivalence's deployment)."""
    local = tiny_config(tmp_path / "local", "fedmezo", *SMALL, "clients=1")
    run_experiment(local, show_progress=False)
    warm = tiny_config(tmp_path / "warm", "fedmezo", *SMALL, "clients=1")
    context = nodes(0, **{"state-dir": str(tmp_path / "node-0")})
    run_experiment(warm, show_progress=False, round_fn=partial(run_round, transport=HandlerTransport({0: context}, warm)))
    reference, served = final_weights(local), final_weights(warm)
    assert reference.keys() == served.keys() and all(torch.equal(reference[name], served[name]) for name in reference)
    assert [row["train_loss"] for row in rows(warm)] == [row["train_loss"] for row in rows(local)]
    first, *later = [row["per_client"][0] for row in rows(warm)]
    assert later[0]["bytes_down"] < first["bytes_down"]  # replayed onto the model kept in its state-dir
    assert list((tmp_path / "node-0").rglob("kept-0.safetensors"))
    assert first["worker_start_s"] > 0 and first["model_load_s"] > 0  # the first message starts the worker
    assert all(c["worker_start_s"] == 0 and c["model_load_s"] == 0 for c in later)  # then it is warm
    folder = folder_of(workers, context)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE((folder / "authkey").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700


def test_a_changed_config_run_or_data_file_reloads_and_a_hung_or_gone_worker_is_replaced(tmp_path, nodes, workers, monkeypatch):
    stand_in = subprocess.Popen(["sleep", "600"])  # plays the SuperNode the worker watches
    monkeypatch.setattr(worker, "supernode_pid", lambda: stand_in.pid)
    try:
        config = tiny_config(tmp_path, "fedmezo", *SMALL, "rounds=1", "clients=1")
        context = nodes(0)
        recording = HandlerTransport({0: context}, config)
        run_experiment(config, show_progress=False, round_fn=partial(run_round, transport=recording))
        downlink, folder = recording.downlinks[0], folder_of(workers, context)
        first_worker = worker_process(folder)
        assert one_message(context, downlink)["model_load_s"] == 0  # the same run and config: warm

        changed = tiny_config(tmp_path, "fedmezo", *SMALL, "rounds=1", "clients=1", "fedmezo.lr=0.004")
        context.state[RUN] = ConfigRecord({"config": json.dumps(changed.to_dict())})
        assert one_message(context, downlink)["model_load_s"] > 0  # a new config: never the stale experiment
        assert one_message(context, downlink)["model_load_s"] == 0
        next_run = nodes(0, run_id=8)
        next_run.state[RUN] = ConfigRecord({"config": json.dumps(changed.to_dict())})
        assert one_message(next_run, downlink)["model_load_s"] > 0  # a new run id: a fresh entry
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps({"question": f"What is {i} plus 1?", "answer": f"{i} + 1\n#### {i + 1}"}) + "\n"
                                for i in range(60)))
        with_file = tiny_config(tmp_path, "fedmezo", *SMALL, "rounds=1", "clients=1", "task=gsm8k", f"data.path={data}",
                                "data.limit=60", "data.val_size=4", "data.test_size=4")
        next_run.state[RUN] = ConfigRecord({"config": json.dumps(with_file.to_dict())})
        assert one_message(next_run, downlink)["model_load_s"] > 0
        assert one_message(next_run, downlink)["model_load_s"] == 0
        os.utime(data, ns=(time.time_ns(), time.time_ns() + 10**9))  # the same path, rewritten
        assert one_message(next_run, downlink)["model_load_s"] > 0
        assert worker_process(folder).pid == first_worker.pid  # one worker served all of it

        first_worker.send_signal(signal.SIGSTOP)  # hung: it will never answer
        monkeypatch.setattr(worker, "HANDSHAKE_TIMEOUT_S", 1.0)
        measured = one_message(next_run, downlink)  # killed (its socket and pid file stay behind) and replaced
        first_worker.wait(10)
        assert measured["worker_start_s"] > 0 and measured["model_load_s"] > 0
        second_worker = worker_process(folder)
        assert second_worker.pid != first_worker.pid
        with pytest.raises(ZofedError, match="warm worker: "):
            one_message(next_run, b"not a zofed message")  # answered as an error; the worker lives on
        assert second_worker.is_running()
        stand_in.terminate()
        stand_in.wait()
        second_worker.wait(10)  # its SuperNode is gone: it exits, its socket removed
        assert not (folder / "worker.sock").exists()
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_worker_exits_when_idle(tmp_path, nodes, workers):
    config = tiny_config(tmp_path, "fedmezo", *SMALL)
    idle = nodes(0, **{"worker-idle-s": 1.0})
    idle.state[RUN] = ConfigRecord({"config": json.dumps(config.to_dict())})
    with pytest.raises(ZofedError):
        one_message(idle, b"not a zofed message")
    folder = folder_of(workers, idle)
    worker_process(folder).wait(15)  # idle for a second: gone
    assert not (folder / "worker.sock").exists()


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
    too_deep = Context(run_id=7, node_id=1, node_config={"worker-dir": str(tmp_path / ("x" * 100))}, state=RecordDict(),
                       run_config={})
    with pytest.raises(ZofedError, match="shorter --worker-dir"):
        worker.node_folder(too_deep)
