"""Injected faults in the in-process runtime: lost replies, hostile clients, and the defences."""


import pytest
import torch

import zofed.runtime.driver as driver
import zofed.runtime.round as round_body
from zofed.errors import ZofedError
from zofed.runtime.client import receive_model_
from zofed.runtime.driver import round_rows, run_experiment

from .helpers import tiny_config


def rows(config):
    return round_rows(config.run_dir)


def test_thirty_percent_lost_replies_finish_and_are_recorded_with_replay_catch_up(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", "rounds=4", "clients=6", "clients_per_round=4", "local.local_steps=4",
                         "fedmezo.upload=seeds", "fedmezo.downlink=replay", "faults.drop_rate=0.3")
    summary = run_experiment(config, show_progress=False)
    history = rows(config)
    dropped = [client for row in history for client in row["dropped"]]
    assert 2 <= len(dropped) <= 10  # about 30% of 16 contacts
    for row in history:
        # a lost reply is a client the server never heard from: no row, no bytes up, as on Flower
        assert {c["client"] for c in row["per_client"]} == set(row["clients"]) - set(row["dropped"])
        assert sorted(row["answered"] + row["dropped"]) == sorted(row["clients"])  # sampled = answered + dropped
        assert row["bytes_up"] == sum(c["bytes_up"] for c in row["per_client"])
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    again = tiny_config(tmp_path / "again", "fedmezo", "rounds=4", "clients=6", "clients_per_round=4",
                        "local.local_steps=4", "fedmezo.upload=seeds", "fedmezo.downlink=replay", "faults.drop_rate=0.3")
    assert run_experiment(again, show_progress=False)["final_eval_loss"] == summary["final_eval_loss"]  # reproducible


def test_replay_clients_that_missed_rounds_catch_up_bit_exactly_or_get_weights_past_the_bound(tmp_path, monkeypatch):
    """30% of replies lost, max_lag 2: every client starts its round on exactly the server's model."""
    config = tiny_config(tmp_path, "fedmezo", "rounds=10", "clients=5", "clients_per_round=3", "local.local_steps=2",
                         "fedmezo.upload=seeds", "fedmezo.downlink=replay", "fedmezo.max_lag=2", "faults.drop_rate=0.3")
    server = {}
    received = []  # (kind, version the client held, version it needed, whether it now holds the server's model)

    def play(experiment, algorithm, state, round, kept):
        server["weights"] = {name: tensor.clone() for name, tensor in state.weights.items()}
        state, row = driver.run_round(experiment, algorithm, state, round, kept)
        versions = state.info["client_versions"]
        # only the replies that came moved the model: the server records exactly the repliers as synced
        assert {int(c) for c, v in versions.items() if v == round - 1} == set(row["clients"]) - set(row["dropped"])
        return state, row

    def checked_receive(message, tensors, names, kept):
        held = kept.version
        message = receive_model_(message, tensors, names, kept)
        exact = all(torch.equal(tensor, server["weights"][name]) for name, tensor in zip(names, tensors))
        received.append((message.kind, held, message.round - 1, exact))
        return message

    monkeypatch.setattr(round_body, "receive_model_", checked_receive)
    summary = run_experiment(config, show_progress=False, round_fn=play)

    assert summary["rounds_run"] == 10 and all(exact for *_, exact in received)
    replays = [(held, needed) for kind, held, needed, _ in received if kind == "replay"]
    assert any(needed - held >= 2 for held, needed in replays)  # caught up over missed rounds
    # past the bound (held a model older than the replay log) or its last reply lost: the weights again
    assert any(kind == "weights" and held is not None and needed - held > 2 for kind, held, needed, _ in received)


def test_nan_replies_are_rejected_and_counted_never_applied(tmp_path):
    config = tiny_config(tmp_path, "fedkseed", "rounds=2", "clients=3", "faults.hostile_clients=[1]",
                         "faults.hostile_mode=nan")
    summary = run_experiment(config, show_progress=False)
    assert all(row["rejected"] == {"1": "a scalar is NaN, inf or not a number"} for row in rows(config))
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]


def test_one_hostile_client_in_four_is_contained_by_the_median(tmp_path):
    algorithm, common = "fedkseed", ("rounds=3", "clients=4")
    clean = run_experiment(tiny_config(tmp_path / "clean", algorithm, *common), show_progress=False)
    attack = (*common, "faults.hostile_clients=[2]", "faults.hostile_mode=scale", "faults.hostile_scale=1000")
    # the default bound (10x the round's median) off: what the median alone contains
    attacked = run_experiment(tiny_config(tmp_path / "attacked", algorithm, *attack, "robust.default_bound=off"),
                         show_progress=False)
    defended = run_experiment(tiny_config(tmp_path / "defended", algorithm, *attack, "robust.aggregator=median",
                                     "robust.default_bound=off"), show_progress=False)
    def progress(summary) -> float:  # tiny-llama starts near log(vocab): compare what training gained
        return summary["initial_eval_loss"] - summary["final_eval_loss"]

    assert progress(clean) > 0
    assert progress(attacked) < 0  # the attack undoes training
    assert progress(defended) > 0.5 * progress(clean)


def test_median_with_per_client_seeds_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ZofedError, match="shared coordinates"):
        tiny_config(tmp_path, "fedmezo", "fedmezo.upload=seeds", "robust.aggregator=median")


@pytest.mark.parametrize("runtime", ["flower-sim", "flower"])
def test_faults_on_a_flower_runtime_are_refused_not_skipped(tmp_path, runtime):
    with pytest.raises(ZofedError, match=f"runtime=local only, not runtime={runtime}"):
        tiny_config(tmp_path, "fedmezo", f"runtime={runtime}", "faults.drop_rate=0.3")
    tiny_config(tmp_path, "fedmezo", f"runtime={runtime}")
