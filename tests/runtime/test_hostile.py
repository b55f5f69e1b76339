"""The hostile-reply matrix in the in-process runtime: every case rejected and counted, the run completes, and
its result equals a run in which the hostile clients sent nothing.

The matrix runs in tests/runtime/flower/test_hostile.py, through this runtime and flower-sim against one silent
reference run per case set (`check_local_matrix` holds this runtime's checks)."""

from __future__ import annotations

import json
import math

import torch

from zofed.runtime.driver import round_rows, run_experiment, run_round
from zofed.runtime.round import InProcessTransport

from .helpers import final_weights, tiny_config
from .hostile import CASE_SETS, CASES, FLOWER_CASES, HostileTransport

CLIENTS = 10
SETUPS = {  # case set -> algorithm and settings
    "seeds": ("fedmezo", "fedmezo.upload=seeds"),
    "zorba": ("zorba",),
    "gamlpp": ("gamlpp",),
    "decomfl": ("decomfl", "decomfl.perturbations=2"),
}


def hostile_config(tmp_path, name: str, *extra: str):
    algorithm, *settings = SETUPS[name]
    rounds = math.ceil(len(CASE_SETS[name]) / (CLIENTS - 1))
    return tiny_config(tmp_path, algorithm, f"clients={CLIENTS}", f"rounds={rounds}", "local.local_steps=2",
                       "eval.val_examples=8", "eval.test_examples=8", "eval.accuracy_examples=0", *settings, *extra)


def run_with(config, plan, silent: bool) -> list[dict]:
    def play(experiment, algorithm, state, round, kept):
        inner = InProcessTransport(experiment, algorithm, kept, config.faults, config.seed)
        return run_round(experiment, algorithm, state, round, kept, transport=HostileTransport(inner, plan, silent))

    run_experiment(config, show_progress=False, round_fn=play)
    return rows_of(config)


def rows_of(config) -> list[dict]:
    return round_rows(config.run_dir)


def assert_rejected_as_planned(rows, plan) -> None:
    for row in rows:
        planned = {str(client): case for (round, client), case in plan.items() if round == row["round"]}
        assert set(row["rejected"]) == set(planned), (row["round"], row["rejected"], planned)
        assert row["dropped"] == []
        for client, why in row["rejected"].items():
            assert why, planned[client]
        by_client = {c["client"]: c for c in row["per_client"]}
        assert all("rejected" in by_client[int(c)] for c in planned)


def assert_same_result(rows, reference_rows, config, reference) -> None:
    a, b = final_weights(config), final_weights(reference)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert [r["eval_loss"] for r in rows] == [r["eval_loss"] for r in reference_rows]


def test_the_matrix_has_the_issue_s_cases():
    assert len(CASES) + len(FLOWER_CASES) >= 25


def check_local_matrix(tmp_path, name: str, plan, reference, reference_rows) -> None:
    """The in-process runtime's hostile run against the silent reference run of the same case set."""
    config = hostile_config(tmp_path / "hostile", name)
    rows = run_with(config, plan, silent=False)
    assert_rejected_as_planned(rows, plan)
    assert all(set(row["dropped"]) == {c for (r, c) in plan if r == row["round"]} for row in reference_rows)
    assert_same_result(rows, reference_rows, config, reference)
    # the refused bytes are counted: the hostile run's uplink exceeds the silent one's
    assert sum(r["bytes_up"] for r in rows) > sum(r["bytes_up"] for r in reference_rows)


def test_the_hostile_benchmark_runs_its_small_configuration(tmp_path, monkeypatch):
    """benchmarks/hostile_clients.py on tiny-llama, one round: the issue-22 attacks with the default settings.

    The metric attacks are rejected and counted; the record-count attack (the last step's record, g ×100)
    is applied at most at the default bound: every run ends within the benchmark's 5% of the clean one."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root))
    from benchmarks import hostile_clients

    output = tmp_path / "hostile.json"
    monkeypatch.setattr(sys, "argv", [
        "hostile_clients.py", "--config", str(root / "configs/quickstart.yaml"), "--model", "tiny-llama",
        "--upload", "seeds", "--rounds", "1", "--local-steps", "2", "--limit", "240", "--eval-examples", "4",
        "--modes", "", "--output", str(output)])
    hostile_clients.main()
    document = json.loads(output.read_text())["by_runtime"]["local"]["seeds"]
    attacks = {case["attack"]: case["default"] for case in document["attacks"]}
    assert set(attacks) == set(hostile_clients.ATTACKS)
    assert all(attacks[name]["rejected_replies"] == 1 for name in ("metric-huge", "metric-nan", "metric-collide"))
    assert document["goal_met"] and len(document["load_average_before"]) == 3 and document["resolved_configs"]
