"""privacy.dp: step's accountant (runtime/privacy.py) against dp_accounting itself, and private runs on tiny-llama:
ε in every round row and summary.json, resume, flower-sim, and no extra forwards."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
import torch

from zofed.runtime import privacy
from zofed.runtime.driver import round_rows, run_experiment

from .helpers import final_weights, tiny_config

PRIVATE = ("rounds=2", "local.local_steps=3", "eval.val_examples=8", "eval.test_examples=8",
           "eval.accuracy_examples=0", "privacy.dp=step", "privacy.clip=0.5")


def test_epsilon_is_dp_accountings_for_the_same_sampling_noise_and_steps():
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(1.1)), 300)
    assert privacy.epsilon(0.02, 1.1, 1, 300, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    spent = [privacy.epsilon(0.02, 1.1, 1, steps, 1e-5) for steps in (0, 10, 100, 300, 1000)]
    assert spent[0] == 0.0 and spent == sorted(spent) and len(set(spent)) == len(spent)
    assert privacy.epsilon(0.02, 0.0, 1, 10, 1e-5) == math.inf


def test_p_scalars_of_one_batch_are_one_gaussian_of_sigma_over_root_p():
    assert privacy.epsilon(0.1, 2.0, 4, 50, 1e-5) == pytest.approx(privacy.epsilon(0.1, 1.0, 1, 50, 1e-5), rel=1e-12)
    assert privacy.epsilon(0.1, 2.0, 4, 50, 1e-5) > privacy.epsilon(0.1, 2.0, 1, 50, 1e-5)


def test_derived_noise_multiplier_spends_the_target_epsilon():
    sigma = privacy.derive_noise_multiplier(3.0, 1e-5, 0.05, 2, 200)
    assert privacy.epsilon(0.05, sigma, 2, 200, 1e-5) == pytest.approx(3.0, rel=1e-3)
    assert privacy.epsilon(0.05, 0.9 * sigma, 2, 200, 1e-5) > 3.0


def test_sampling_rate_and_expected_batch():
    assert privacy.sampling_rate(4, 100) == 0.04 and privacy.expected_batch(4, 100) == 4.0
    assert privacy.sampling_rate(4, 3) == 1.0 and privacy.expected_batch(4, 3) == 3.0


def test_charge_round_counts_every_sampled_client_the_rounds_local_steps():
    row = {"clients": [0, 2], "per_client": [{"client": 0}, {"client": 2, "num_examples": 50.0}]}
    counts = privacy.charge_round({"0": [3, 0.04]}, row, 3, 4, {0: 100, 2: None})
    assert counts == {"0": [6, 0.04], "2": [3, 0.08]}  # client 2's rate from its own count (a deployment)


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("private"), "fedmezo", *PRIVATE, "privacy.epsilon=8")
    return config, run_experiment(config, show_progress=False)


def test_private_run_reports_each_clients_epsilon_every_round_and_in_the_summary(private_run):
    config, summary = private_run
    rows = round_rows(config.run_dir)
    sigma = summary["privacy"]["noise_multiplier"]
    assert summary["privacy"]["noise_multiplier_derived"] and sigma > 0
    rate = privacy.sampling_rate(4, 120)  # 240 examples, iid over 2 clients
    for round, row in enumerate(rows, 1):
        steps = round * 3  # clients_per_round 1.0: both clients every round
        expected = privacy.epsilon(rate, sigma, 1, steps, 1e-5)
        assert row["privacy_epsilon_by_client"] == {"0": pytest.approx(expected), "1": pytest.approx(expected)}
        assert [client["privacy_epsilon"] for client in row["per_client"]] == [pytest.approx(expected)] * 2
        assert math.isnan(row["train_loss"])  # no client reports an unnoised loss
    assert rows[-1]["privacy_epsilon"] == pytest.approx(8.0, rel=1e-3)  # planned for every client every round
    assert summary["privacy"]["epsilon"] == pytest.approx(rows[-1]["privacy_epsilon"])
    assert json.loads((config.run_dir / "summary.json").read_text())["privacy"]["steps_by_client"] == {"0": 6, "1": 6}


def test_private_round_logs_epsilon_to_tensorboard(private_run):
    from zofed.tracking import scalars

    row = round_rows(private_run[0].run_dir)[-1]
    values = scalars(row)
    assert values["privacy/epsilon"] == pytest.approx(row["privacy_epsilon"])
    assert values["privacy/epsilon_client_1"] == pytest.approx(row["privacy_epsilon_by_client"]["1"])


def test_resumed_private_run_reports_the_uninterrupted_runs_epsilon(private_run, tmp_path):
    config, _ = private_run
    resumed = tiny_config(tmp_path, "fedmezo", *PRIVATE, "privacy.epsilon=8")
    run_experiment(resumed, show_progress=False, stop_after_round=1)
    run_experiment(resumed, show_progress=False, resume=True)
    for whole, split in zip(round_rows(config.run_dir), round_rows(resumed.run_dir), strict=True):
        assert split["privacy_epsilon_by_client"] == whole["privacy_epsilon_by_client"]


def test_private_step_runs_the_same_forwards_as_a_plain_one(tmp_path):
    """Per-example losses come from the step's own two forwards: count the model's forward calls of one round."""
    from zofed.runtime.experiment import build_experiment
    from zofed.algorithms import build_algorithm
    from zofed.messages import Message

    def forwards(*overrides):
        config = tiny_config(tmp_path, "fedmezo", "rounds=1", "local.local_steps=2", *overrides)
        experiment = build_experiment(config)
        calls = []
        experiment.model.register_forward_pre_hook(lambda module, args: calls.append(1))
        algorithm = build_algorithm("fedmezo", config.algorithm_settings)
        state = algorithm.init(experiment.view.state_dict(experiment.device), config.seed)
        message = algorithm.configure(state, 1, [0])[0]
        reply = algorithm.train(message, experiment.client_env(1, 0))
        return len(calls), reply.metrics["forward_passes"]

    plain = forwards()
    private = forwards("privacy.dp=step", "privacy.noise_multiplier=1.0", "local.batch_size=60")
    assert plain == private == (4, 4.0)


def test_dp_none_is_the_plain_step(tmp_path):
    base = ("rounds=1", "local.local_steps=2", "eval.val_examples=8", "eval.test_examples=8", "eval.accuracy_examples=0")
    absent = tiny_config(tmp_path / "absent", "fedmezo", *base)
    none = tiny_config(tmp_path / "none", "fedmezo", *base, "privacy.dp=none")
    for config in (absent, none):
        run_experiment(config, show_progress=False)
    a, b = final_weights(absent), final_weights(none)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert "privacy" not in json.loads((absent.run_dir / "summary.json").read_text())
    assert "privacy_epsilon" not in round_rows(absent.run_dir)[0]


def test_private_fedspzo_split_forward_and_decomfl_run(tmp_path):
    """The split forward's suffix losses are per example too, and P directions a step are accounted as one event."""
    for algorithm in ("fedspzo", "decomfl"):
        config = tiny_config(tmp_path / algorithm, algorithm, *PRIVATE, "rounds=1", "privacy.noise_multiplier=1.0")
        summary = run_experiment(config, show_progress=False)
        scalars = config.algorithm_settings.scalars_per_step
        rate = privacy.sampling_rate(4, 120)
        assert summary["privacy"]["epsilon"] == pytest.approx(privacy.epsilon(rate, 1.0, scalars, 3, 1e-5))
        assert math.isfinite(summary["final_eval_loss"])


def test_an_empty_poisson_batch_releases_noise_alone_and_runs_no_forward(tmp_path):
    from dataclasses import replace

    from zofed.algorithms import build_algorithm
    from zofed.runtime.experiment import build_experiment, collate_or_empty

    for algorithm in ("fedspzo", "fedmezo"):
        upload = ["fedmezo.upload=seeds"] if algorithm == "fedmezo" else []
        config = tiny_config(tmp_path, algorithm, "rounds=1", "local.local_steps=2", *upload,
                             "privacy.dp=step", "privacy.noise_multiplier=1.0")
        experiment = build_experiment(config)
        calls = []
        experiment.model.register_forward_pre_hook(lambda module, args: calls.append(1))
        method = build_algorithm(algorithm, config.algorithm_settings)
        state = method.init(experiment.view.state_dict(experiment.device), config.seed)
        env = experiment.client_env(1, 0)
        empty = [collate_or_empty([], experiment.pad_token_id) for _ in range(2)]
        reply = method.train(method.configure(state, 1, [0])[0], replace(env, batches=iter(empty)))
        assert calls == [] and reply.scalars and all(math.isfinite(g) and g != 0.0 for g in reply.scalars)


def test_private_run_on_flower_sim_reports_the_local_runs_epsilon(tmp_path, monkeypatch, private_run):
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    from zofed.runtime.flower.simulation import run_flower_sim

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    local, local_summary = private_run
    simulated = tiny_config(tmp_path, "fedmezo", *PRIVATE, "privacy.epsilon=8", "runtime=flower-sim")
    summary = run_flower_sim(simulated, show_progress=False)
    # the clients' processes plan the same σ from the same config and partitions as the server's
    assert summary["privacy"]["noise_multiplier"] == local_summary["privacy"]["noise_multiplier"]
    for sim_row, local_row in zip(round_rows(simulated.run_dir), round_rows(local.run_dir), strict=True):
        assert sim_row["privacy_epsilon_by_client"] == local_row["privacy_epsilon_by_client"]
        assert sim_row["forward_passes"] == local_row["forward_passes"]
        assert math.isnan(sim_row["train_loss"])  # the nodes' steps were private: no loss reported
