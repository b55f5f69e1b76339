"""Injected faults in the in-process runtime: lost replies, hostile clients, and the defences."""

import json

import pytest

from zofed.errors import ZofedError
from zofed.runtime.local import run_local

from .helpers import tiny_config


def rows(config):
    return [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]


def test_thirty_percent_lost_replies_finish_and_are_recorded_with_replay_catch_up(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", "rounds=4", "clients=6", "clients_per_round=4", "local.local_steps=4",
                         "fedmezo.upload=seeds", "fedmezo.downlink=replay", "faults.drop_rate=0.3")
    summary = run_local(config, show_progress=False)
    history = rows(config)
    dropped = [client for row in history for client in row["dropped"]]
    assert 2 <= len(dropped) <= 10  # about 30% of 16 contacts
    for row in history:
        lost = {c["client"] for c in row["per_client"] if c.get("dropped")}
        assert lost == set(row["dropped"]) and all(c["bytes_up"] == 0 for c in row["per_client"] if c.get("dropped"))
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    again = tiny_config(tmp_path / "again", "fedmezo", "rounds=4", "clients=6", "clients_per_round=4",
                        "local.local_steps=4", "fedmezo.upload=seeds", "fedmezo.downlink=replay", "faults.drop_rate=0.3")
    assert run_local(again, show_progress=False)["final_eval_loss"] == summary["final_eval_loss"]  # reproducible


def test_nan_replies_are_rejected_and_counted_never_applied(tmp_path):
    config = tiny_config(tmp_path, "fedkseed", "rounds=2", "clients=3", "faults.hostile_clients=[1]",
                         "faults.hostile_mode=nan")
    summary = run_local(config, show_progress=False)
    assert all(row["rejected"] == {"1": "a scalar is NaN, inf or not a number"} for row in rows(config))
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]


def test_one_hostile_client_in_four_is_contained_by_the_median(tmp_path):
    algorithm, common = "fedkseed", ("rounds=3", "clients=4")
    clean = run_local(tiny_config(tmp_path / "clean", algorithm, *common), show_progress=False)
    attack = (*common, "faults.hostile_clients=[2]", "faults.hostile_mode=scale", "faults.hostile_scale=1000")
    attacked = run_local(tiny_config(tmp_path / "attacked", algorithm, *attack), show_progress=False)
    defended = run_local(tiny_config(tmp_path / "defended", algorithm, *attack, "robust.aggregator=median"),
                         show_progress=False)
    def progress(summary) -> float:  # tiny-llama starts near log(vocab): compare what training gained
        return summary["initial_eval_loss"] - summary["final_eval_loss"]

    assert progress(clean) > 0
    assert progress(attacked) < 0  # the attack undoes training
    assert progress(defended) > 0.5 * progress(clean)


def test_median_with_per_client_seeds_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ZofedError, match="shared coordinates"):
        tiny_config(tmp_path, "fedmezo", "fedmezo.upload=seeds", "robust.aggregator=median")
