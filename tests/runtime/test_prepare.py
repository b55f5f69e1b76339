"""Preparation before round 1 (ZorBA's memory model): measured at start-up, kept with the run, given
in the config, and honoured by a real client process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zofed.config import load_config
from zofed.errors import ZofedError
from zofed.runtime import prepare
from zofed.runtime.driver import run_experiment
from zofed.runtime.prepare import CHILD_ENV, prepared

from .helpers import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def test_profile_is_measured_once_kept_with_the_run_and_reused_on_resume(tmp_path):
    config = tiny_config(tmp_path, "zorba", "rounds=2", "local.local_steps=3", "zorba.memory_profile=null")
    assert run_experiment(config, show_progress=False, stop_after_round=1) is None
    saved = yaml.safe_load((config.run_dir / "config.yaml").read_text())["zorba"]["memory_profile"]
    assert saved["source"].startswith("measured") and len(saved["block_mb"]) == 4
    assert [point["active_blocks"] for point in saved["points"]] == [1.0, 2.0, 4.0]
    for point in saved["points"]:
        cumulative = sum(saved["block_mb"][: int(point["active_blocks"])])
        assert saved["base_mb"] + cumulative >= point["peak_mb"] - 1e-6  # never under-predicts a measured point
    assert all(value > 0 for value in saved["block_mb"]) and saved["block_params"] == [896] * 4
    resumed = prepared(config, resume=True)
    assert resumed.algorithm_settings.memory_profile.model_dump() == saved
    run_experiment(config, resume=True, show_progress=False)


def test_a_given_profile_is_kept_and_nothing_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "measure", lambda *args: pytest.fail("measured a profile the config gives"))
    config = tiny_config(tmp_path, "zorba")
    assert prepared(config) is config and prepared(config, resume=True) is config
    fedmezo = tiny_config(tmp_path, "fedmezo")  # a method that declares no preparation
    assert prepared(fedmezo) is fedmezo


def test_resume_reuses_the_saved_profile_and_refuses_a_corrupt_one(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "measure", lambda *args: pytest.fail("measured again on resume"))
    config = tiny_config(tmp_path, "zorba", "zorba.memory_profile=null")
    saved = {"base_mb": 700.0, "block_mb": [0.5] * 4, "block_params": [896] * 4, "points": [], "source": "measured"}
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "config.yaml").write_text(yaml.safe_dump({**config.to_dict(), "zorba": {"memory_profile": saved}}))
    resumed = prepared(config, resume=True)
    assert resumed.algorithm_settings.memory_profile.model_dump() == saved
    assert resumed.algorithm_settings.model_copy(update={"memory_profile": None}) == config.algorithm_settings
    (config.run_dir / "config.yaml").write_text(yaml.safe_dump({"zorba": {"memory_profile": {**saved, "base_mb": -1}}}))
    with pytest.raises(ZofedError, match="saved config.yaml holds an invalid memory_profile .*base_mb"):
        prepared(config, resume=True)


@pytest.mark.slow
def test_a_smollm2_zorba_client_stays_within_its_budget(tmp_path):
    """The smallest device of the 'mixed' profile: real client rounds in processes of their own (the
    server's downlinks encoded in another, as they would arrive): first contact, and the steady state
    of the default block-record downlink, with the client's kept copy on its disk."""
    config = prepared(load_config(ROOT / "configs" / "quickstart.yaml", [
        "algorithm=zorba", "trainable.mode=full", "clients=3", "clients_per_round=3", "zorba.device_profile=mixed",
        "local.local_steps=2", "local.batch_size=2", f"output_dir={tmp_path}"]))
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config.to_dict()))
    output = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "zorba_memory.py"), "--one-client", str(config_path), "0"],
        check=True, capture_output=True, text=True, env={**os.environ, **CHILD_ENV},
    ).stdout
    row = json.loads(output.strip().splitlines()[-1])
    assert len(row["active_blocks"]) < 30
    assert row["first_contact_peak_rss_mb"] <= row["budget_mb"], row  # weights, saved to its disk
    assert row["replay_peak_rss_mb"] <= row["budget_mb"], row  # kept file loaded, records replayed, saved again
