"""Deployment faults: a failing or killed client is dropped and recorded, a restarted SuperNode rejoins, --resume
continues after the ServerApp was killed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from zofed.runtime.flower.deployment import run_flower
from zofed.runtime.driver import round_rows, run_experiment

from ..helpers import final_weights, tiny_config

pytest.importorskip("flwr")

QUICK_HEARTBEAT = Path(__file__).parent / "quick_heartbeat"  # the killed node is seen offline in 10-20 s, not 30-60 s
SMALL = ("local.local_steps=3", "eval.val_examples=8", "eval.test_examples=8", "eval.accuracy_examples=0",
         "fedmezo.upload=seeds", "fedmezo.downlink=replay", "flower.min_replies=1")


@pytest.fixture(autouse=True)
def flower_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_failing_client_is_dropped_and_a_restarted_node_rejoins_on_resume(tmp_path, deployment):
    deployment.start_superlink()
    deployment.start_supernode(0, "--state-dir", str(tmp_path / "node-0"))
    broken = deployment.start_supernode(1, "--data-path", str(tmp_path / "missing.jsonl"))
    superlink = f"superlink={deployment.superlink}"

    first = tiny_config(tmp_path, "fedmezo", *SMALL, "rounds=1", "runtime=flower", superlink)
    run_flower(first, show_progress=False)
    [row] = round_rows(first.run_dir)
    assert row["clients"] == [0, 1] and row["dropped"] == [1]
    assert "ZofedError" in row["dropped_reasons"]["1"]  # the node-local data path it was given is refused
    assert [client["client"] for client in row["per_client"]] == [0]
    assert row["bytes_up"] == row["per_client"][0]["bytes_up"]  # only what arrived is counted up
    assert row["train_loss"] == row["per_client"][0]["train_loss"]

    deployment.stop(broken)
    deployment.start_supernode(1)  # the same client on a fresh node: a new node id, learnt by the server
    resumed = tiny_config(tmp_path, "fedmezo", *SMALL, "rounds=2", "runtime=flower", superlink)
    summary = run_flower(resumed, resume=True, show_progress=False)
    rows = round_rows(resumed.run_dir)
    assert [r["round"] for r in rows] == [1, 2] and summary["rounds"] == 2
    assert rows[1]["dropped"] == [] and len(rows[1]["per_client"]) == 2
    # The resumed session re-syncs everyone with weights: no replay records in its first round.
    assert rows[1]["bytes_down_by_kind"]["records"] == 0 and rows[1]["bytes_down_by_kind"]["weights"] > 0


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.1)


def rows_of(config) -> list[dict]:
    return round_rows(config.run_dir) if (config.run_dir / "metrics.jsonl").exists() else []


def test_supernode_killed_mid_round_is_dropped_and_its_restart_rejoins(tmp_path, deployment):
    deployment.env["PYTHONPATH"] = os.pathsep.join([str(QUICK_HEARTBEAT), deployment.env["PYTHONPATH"]])
    deployment.start_superlink()
    deployment.start_supernode(0)
    doomed = deployment.start_supernode(1)
    config = tiny_config(tmp_path, "fedmezo", *SMALL, "rounds=2", "runtime=flower", f"superlink={deployment.superlink}",
                         "flower.timeout_s=300")  # not reached: the SuperLink reports the node offline
    run = threading.Thread(target=run_flower, args=(config,), kwargs={"show_progress": False})
    run.start()
    try:
        # Mid-round: node 1 has started the ClientApp that trains for round 1.
        log = tmp_path / "supernode-1.log"
        wait_until(lambda: "Start `flwr-clientapp`" in log.read_text().partition("Receiving: train message")[2], 240,
                   "node 1's ClientApp for round 1")
        deployment.crash(doomed)
        deployment.start_supernode(1)  # back while round 1 waits for the dead node
    finally:
        run.join(timeout=400)
    assert not run.is_alive()
    first, second = rows_of(config)
    assert first["clients"] == [0, 1] and first["dropped"] == [1]
    assert "unavailable" in first["dropped_reasons"]["1"].lower()  # Flower's word that the node went offline
    assert [client["client"] for client in first["per_client"]] == [0]
    assert first["train_loss"] == first["per_client"][0]["train_loss"]  # aggregated what came
    # The restarted node (a new node id) is greeted and trains round 2, re-synced with the weights.
    assert second["dropped"] == [] and [client["client"] for client in second["per_client"]] == [0, 1]
    assert second["bytes_down_by_kind"]["weights"] > 0


def test_serverapp_killed_mid_run_resumes_to_the_uninterrupted_weights(tmp_path, deployment):
    import yaml

    common = ("rounds=3", "local.local_steps=3", "eval.val_examples=8", "eval.test_examples=8", "eval.accuracy_examples=0",
              "fedmezo.upload=seeds", "fedmezo.downlink=replay")
    reference = tiny_config(tmp_path / "reference", "fedmezo", *common)
    run_experiment(reference, show_progress=False)  # Flower's runs equal local ones bit for bit (test_equivalence)

    deployment.start_superlink()
    for client in range(2):
        deployment.start_supernode(client, "--state-dir", str(tmp_path / f"node-{client}"))
    killed = tiny_config(tmp_path / "killed", "fedmezo", *common, "runtime=flower", f"superlink={deployment.superlink}")
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(killed.to_dict()))
    command = [sys.executable, "-m", "zofed.cli", "run", str(config_file), "--no-progress"]
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(command, env=deployment.env, stdout=log, stderr=subprocess.STDOUT)
    deployment.processes.append(driver)
    # Mid-run: round 1 is checkpointed, round 2 is under way. Its metrics row is written before its checkpoint:
    # a kill between the two leaves nothing that --resume continues, so wait for the checkpoint itself.
    wait_until(lambda: (killed.run_dir / "checkpoints" / "LATEST").exists(), 300, "round 1's checkpoint")
    [serverapp] = deployment.descendants(deployment.superlink_process, "flwr-serverapp")
    serverapp.kill()
    deployment.crash(driver)
    assert len(rows_of(killed)) == 1

    with open(tmp_path / "resumed.log", "wb") as log:
        resumed = subprocess.run([*command, "--resume"], env=deployment.env, stdout=log, stderr=subprocess.STDOUT, timeout=600)
    assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()[-2000:]
    rows, expected = rows_of(killed), rows_of(reference)
    assert [row["round"] for row in rows] == [1, 2, 3]  # complete, each round once
    for row, want in zip(rows, expected):
        assert row["clients"] == want["clients"] and row["bytes_up"] == want["bytes_up"] and row["dropped"] == []
        assert row["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
    a, b = final_weights(reference), final_weights(killed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)
