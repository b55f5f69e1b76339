"""The hostile-reply matrix on flower-sim and in the local runtime: on flower-sim made on the client side of the
Flower transport (a test-only ClientApp wrapper); in both every case rejected and counted, and the run's result
that of one local run in which those clients sent nothing. Many cases per run: nine hostile clients of ten, one case
each per round."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..hostile import CASE_SETS, schedule
from ..test_hostile import (CLIENTS, SETUPS, assert_rejected_as_planned, assert_same_result, check_local_matrix,
                            hostile_config, rows_of, run_with)

pytest.importorskip("flwr")
pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def flower_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the simulation's workers import the wrapper ClientApp from this test package
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("name", SETUPS)
def test_hostile_replies_locally_and_on_flower_sim_are_rejected_and_equal_silence(tmp_path, monkeypatch, name):
    from zofed.runtime.flower import simulation

    plan = schedule(CASE_SETS[name], CLIENTS)
    reference = hostile_config(tmp_path / "silent", name)
    reference_rows = run_with(reference, plan, silent=True)
    check_local_matrix(tmp_path, name, plan, reference, reference_rows)  # the one silent run serves both runtimes

    monkeypatch.setenv("ZOFED_HOSTILE_CASES", name)
    monkeypatch.setenv("ZOFED_HOSTILE_CLIENTS", str(CLIENTS))
    # a simulation worker's first message imports torch and transformers: minutes on a loaded machine
    config = hostile_config(tmp_path / "sim", name, "runtime=flower-sim", "flower.connect_timeout_s=1200")
    simulation.run_flower_sim(config, show_progress=False, client_app="tests.runtime.flower.hostile_app:app")
    rows = rows_of(config)
    assert_rejected_as_planned(rows, plan)
    assert_same_result(rows, reference_rows, config, reference)
