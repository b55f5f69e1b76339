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
from zofed.runtime.lr_probe import GRID, Candidate, falls, pick, scan_order
from zofed.runtime.prepare import prepared

from .helpers import tiny_config

START = 2.0


def test_the_pick_is_on_the_grid_backoff_steps_below_the_largest_lr_that_falls():
    candidates = [Candidate(1e-2, (9.0, 50.0)), Candidate(1e-3, (1.9, 1.8)), Candidate(1e-4, (1.99, 1.98))]
    chosen = pick(START, candidates, backoff=2)
    assert chosen in GRID and chosen == GRID[GRID.index(1e-3) - 2] == 2e-4
    assert pick(START, candidates, backoff=0) == 1e-3


def test_a_candidate_that_diverged_on_the_way_is_rejected_even_where_it_ends_lowest():
    # 5e-3 ends lowest of all, after a spike past the divergence bound: a picker that reads only the last
    # point (or the lowest loss) takes it; this one must take 1e-3
    spiked = Candidate(5e-3, (START * (1 + 2 * lr_probe.DIVERGE), 1.5))
    steady = Candidate(1e-3, (1.95, 1.9))
    assert min([spiked, steady], key=lambda c: c.losses[-1]) is spiked  # what a biased picker would choose
    assert not falls(START, spiked) and falls(START, steady)
    assert pick(START, [spiked, steady], backoff=0) == 1e-3


def test_non_finite_and_noise_sized_falls_do_not_count():
    assert not falls(START, Candidate(1e-2, (1.0, math.nan)))
    assert not falls(START, Candidate(1e-2, (math.inf,)))
    assert not falls(START, Candidate(1e-3, (START * (1 - lr_probe.FALL / 2),)))  # below the fall a probe can tell
    assert not falls(START, Candidate(1e-3, ()))
    assert pick(START, [Candidate(1e-2, (math.nan,)), Candidate(1e-3, (2.1,))]) is None
    assert pick(START, [Candidate(GRID[1], (1.9,))]) == GRID[0]  # backoff stops at the grid's end


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
    assert record["bytes_up"] > 0 and record["bytes_down"] > 0

    monkeypatch.setattr(lr_probe, "lr_range_test", lambda *args: pytest.fail("probed again on resume"))
    summary = run_experiment(config, resume=True, show_progress=False)
    assert summary["lr_probe"]["lr"] == saved and summary["lr_probe"]["forward_passes"] == record["forward_passes"]
    assert json.loads((config.run_dir / "summary.json").read_text())["lr_probe"]["lr"] == saved


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
