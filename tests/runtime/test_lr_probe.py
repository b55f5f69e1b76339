"""lr: auto — the range test's picking rule on synthetic curves, and the whole probe on tiny-llama."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from zofed.config import parse_config
from zofed.errors import ZofedError
from zofed.runtime import lr_probe
from zofed.runtime.driver import run_experiment
from zofed.runtime.lr_probe import GRID, Candidate, bracket_top, falls, holds, pick, scan_order, window_order
from zofed.runtime.prepare import prepared

from .helpers import tiny_config

START = 2.0


def test_the_bracket_top_is_the_largest_lr_that_falls_and_windows_start_one_grid_step_below_it():
    candidates = [Candidate(1e-2, (9.0,)), Candidate(1e-3, (1.9,)), Candidate(1e-4, (1.99,))]
    assert bracket_top(START, candidates) == 1e-3
    assert window_order(1e-3)[:3] == [5e-4, 2e-4, 1e-4]  # the safety step: the bracket's top is never windowed
    assert window_order(GRID[0]) == [GRID[0]]
    assert bracket_top(START, [Candidate(1e-2, (math.nan,))]) is None


def test_a_window_holds_only_where_it_falls_and_keeps_its_fall_at_the_end():
    steady = Candidate(1e-3, (1.9, 1.8, 1.75), phase="window")
    turning = Candidate(2e-3, (1.7, 1.6, 1.85), phase="window")  # fell, then gave back most of it: its edge
    assert holds(START, steady) and falls(START, turning) and not holds(START, turning)
    assert pick(START, [turning, steady]) == 1e-3
    # a bracket candidate is never the pick, however well it falls: only windows are checked for stability
    assert pick(START, [Candidate(5e-3, (1.0,)), steady]) == 1e-3
    assert pick(START, [Candidate(5e-3, (1.0,))]) is None


def test_a_candidate_that_diverged_on_the_way_is_rejected_even_where_it_ends_lowest():
    # 5e-3 ends lowest of all, after a spike past the divergence bound: a picker that reads only the last
    # point (or the lowest loss) takes it; this one must take 1e-3
    spiked = Candidate(5e-3, (START * (1 + 2 * lr_probe.DIVERGE), 1.5, 1.4), phase="window")
    steady = Candidate(1e-3, (1.95, 1.9, 1.85), phase="window")
    assert min([spiked, steady], key=lambda c: c.losses[-1]) is spiked  # what a biased picker would choose
    assert not falls(START, spiked) and not holds(START, spiked) and holds(START, steady)
    assert pick(START, [spiked, steady]) == 1e-3


def test_non_finite_and_noise_sized_falls_do_not_count():
    assert not falls(START, Candidate(1e-2, (1.0, math.nan)))
    assert not falls(START, Candidate(1e-2, (math.inf,)))
    assert not falls(START, Candidate(1e-3, (START * (1 - lr_probe.FALL / 2),)))  # below the fall a probe can tell
    assert not falls(START, Candidate(1e-3, ()))
    assert pick(START, [Candidate(1e-2, (math.nan,), phase="window"), Candidate(1e-3, (2.1,), phase="window")]) is None


def test_the_probe_budget_and_steps_follow_the_run_plan(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", "rounds=12", "local.local_steps=10", "local.batch_size=4",
                         "clients=4", "clients_per_round=2")
    # 12 rounds x 2 clients x 10 steps x 2 forwards = 480 planned; the probe may spend 24% of it
    assert lr_probe.budget_forwards(config, 2) == int(0.24 * 480)
    held = lr_probe.held_forwards(config)
    assert held == 2  # max(4, 2 x 4) examples at batch 4
    assert lr_probe.steps_for(config, 45, 3, 2) == (45 // 3 - held) // 2
    assert lr_probe.steps_for(config, 1, 3, 2) == 1  # at least one step
    assert lr_probe.steps_for(config, 10_000, 1, 2) == 10  # at most the run's own local steps


def test_the_scan_goes_down_the_decades_then_refines_above_the_first_that_falls():
    asked = []

    def good_below(edge):
        def is_good(lr):
            asked.append(lr)
            return lr <= edge
        return is_good

    scan_order(good_below(2e-3))
    assert asked == [1e-1, 1e-2, 1e-3, 5e-3, 2e-3]  # stops at the first refinement that falls
    asked.clear()
    scan_order(good_below(1.5e-3))
    assert asked == [1e-1, 1e-2, 1e-3, 5e-3, 2e-3]  # none above falls: 1e-3 stays the largest
    asked.clear()
    scan_order(good_below(0))
    assert asked == [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]


def test_lr_auto_resolves_records_and_is_reused_on_resume(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "fedmezo", "fedmezo.lr=auto", "rounds=2", "local.local_steps=4")
    assert config.algorithm_settings.lr == "auto"
    assert run_experiment(config, show_progress=False, stop_after_round=1) is None
    saved = yaml.safe_load((config.run_dir / "config.yaml").read_text())["fedmezo"]["lr"]
    record = json.loads((config.run_dir / "lr_probe.json").read_text())
    assert isinstance(saved, float) and saved == record["lr"] and saved in GRID
    assert (config.run_dir / "lr_probe.png").read_bytes().startswith(b"\x89PNG")
    # every forward of the probe is counted: the start's held evaluation, the sizing step, each candidate's
    assert record["forward_passes"] > sum(c["forward_passes"] for c in record["candidates"]) > 0
    # a 2-round plan's budget is too small for a window to hold: the pick is recorded as unchecked
    assert {c["phase"] for c in record["candidates"]} == {"bracket", "window"} and record["checked"] is False
    assert record["bytes_up"] > 0 and record["bytes_down"] > 0

    monkeypatch.setattr(lr_probe, "lr_range_test", lambda *args: pytest.fail("probed again on resume"))
    summary = run_experiment(config, resume=True, show_progress=False)
    assert summary["lr_probe"]["lr"] == saved and summary["lr_probe"]["forward_passes"] == record["forward_passes"]
    assert json.loads((config.run_dir / "summary.json").read_text())["lr_probe"]["lr"] == saved


def test_a_window_that_holds_is_the_pick_and_every_window_lies_below_the_bracket_top(tmp_path):
    # a 30-round plan gives the probe a budget whose stability windows move the tiny model; only the probe runs
    files = {}
    prepared(tiny_config(tmp_path, "fedmezo", "fedmezo.lr=auto", "rounds=30", "local.local_steps=4"), files=files)
    record = json.loads(files["lr_probe.json"])
    window = [c for c in record["candidates"] if c["phase"] == "window"]
    assert record["checked"] and record["lr"] == max(c["lr"] for c in window if c["holds"])
    assert all(c["lr"] < record["bracket_top"] for c in window) and len(window[-1]["losses"]) == lr_probe.WINDOW_POINTS
    # each window round trains the next client: one client's gentle data cannot vouch for the population's
    assert window[-1]["clients"] == [0, 1, 0]  # tiny_config's 2 clients
    assert [c["clients"] for c in record["candidates"] if c["phase"] == "bracket"] == [[0]] * (len(record["candidates"]) - len(window))
    assert record["forward_passes"] <= record["budget_forward_passes"] + window[-1]["forward_passes"]


def test_a_given_lr_skips_the_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(lr_probe, "lr_range_test", lambda *args: pytest.fail("probed a given lr"))
    config = tiny_config(tmp_path, "decomfl")
    assert prepared(config) is config


def test_fedavg_refuses_lr_auto_and_a_deployment_refuses_the_probe_in_one_line(tmp_path):
    with pytest.raises(ZofedError, match="lr: auto is for the zeroth-order methods only; give fedavg.lr a number"):
        tiny_config(tmp_path, "fedavg", "fedavg.lr=auto")
    with pytest.raises(ZofedError, match="lr: auto is resolved by runtime=local or flower-sim, not runtime=flower"):
        tiny_config(tmp_path, "fedkseed", "fedkseed.lr=auto", "runtime=flower")
    with pytest.raises(ZofedError, match="lr"):
        parse_config({"algorithm": "fedmezo", "fedmezo": {"lr": "automatic"}})
