"""Deployment faults: a failing client is dropped and recorded, a restarted SuperNode rejoins, --resume continues."""

from __future__ import annotations

import json

import pytest

from zofed.runtime.flower.deployment import run_flower

from ..helpers import tiny_config

pytest.importorskip("flwr")

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
    [row] = [json.loads(line) for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert row["clients"] == [0, 1] and row["dropped"] == [1]
    assert "ZofedError" in row["dropped_reasons"]["1"]  # the node-local data path it was given is refused
    assert [client["client"] for client in row["per_client"]] == [0]
    assert row["bytes_up"] == row["per_client"][0]["bytes_up"]  # only what arrived is counted up
    assert row["train_loss"] == row["per_client"][0]["train_loss"]

    deployment.stop(broken)
    deployment.start_supernode(1)  # the same client on a fresh node: a new node id, learnt by the server
    resumed = tiny_config(tmp_path, "fedmezo", *SMALL, "rounds=2", "runtime=flower", superlink)
    summary = run_flower(resumed, resume=True, show_progress=False)
    rows = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and summary["rounds"] == 2
    assert rows[1]["dropped"] == [] and len(rows[1]["per_client"]) == 2
    # The resumed session re-syncs everyone with weights: no replay records in its first round.
    assert rows[1]["bytes_down_by_kind"]["records"] == 0 and rows[1]["bytes_down_by_kind"]["weights"] > 0
