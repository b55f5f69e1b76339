"""Runs on a chosen device: metrics carry peak device memory where there is one; the CPU path is unchanged."""

import math

import pytest
import torch

from zofed.algorithms import ALGORITHMS
from zofed.cli import main
from zofed.runtime.driver import round_rows, run_experiment

from .helpers import final_weights, tiny_config

COMMON = ("rounds=1", "clients=2", "clients_per_round=2", "local.local_steps=3")


def test_a_run_on_device_auto_here_reports_no_device_memory(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    config = tiny_config(tmp_path, "fedmezo", "device=auto", *COMMON)
    summary = run_experiment(config, show_progress=False)
    assert summary["peak_device_mb"] is None and summary["peak_rss_mb"] > 0
    assert math.isfinite(summary["final_eval_loss"])
    rows = round_rows(config.run_dir)
    assert all("peak_device_mb" in client for row in rows for client in row["per_client"])
    # eval may move a run to another device; one that does not exist is one line, exit code 2
    assert main(["eval", str(config.run_dir), "--task", "builtin", "--examples", "4", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["eval", str(config.run_dir), "--task", "builtin", "--examples", "4", "--device", "gpu"]) == 2
    assert "config key 'device'" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("algorithm", ["fedmezo", "fedavg"])
def test_a_cuda_run_matches_the_cpu_run_and_measures_device_memory(tmp_path, algorithm):
    cpu = run_experiment(tiny_config(tmp_path / "cpu", algorithm, "device=cpu", "fedmezo.directions=pool", *COMMON),
                    show_progress=False)
    config = tiny_config(tmp_path / "cuda", algorithm, "device=cuda", "fedmezo.directions=pool", *COMMON)
    cuda = run_experiment(config, show_progress=False)
    assert cuda["peak_device_mb"] > 0
    # Different kernels round differently: close, not equal.
    assert cuda["final_eval_loss"] == pytest.approx(cpu["final_eval_loss"], rel=1e-3)
    assert all(tensor.device.type == "cpu" for tensor in final_weights(config).values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_keeps_its_server_on_the_gpu_and_resumes_there(tmp_path, algorithm):
    # The server's state, aggregation and replay live on the model's device; a checkpoint loads on
    # the host and goes back there. Gaussian directions replay on the same GPU, so they are allowed.
    settings = ["rounds=2", "clients=2", "clients_per_round=2", "local.local_steps=3", "device=cuda"]
    if "directions" in ALGORITHMS[algorithm].settings.model_fields:
        settings.append(f"{algorithm}.directions=gaussian")
    uninterrupted = tiny_config(tmp_path / "full", algorithm, *settings)
    first = run_experiment(uninterrupted, show_progress=False)
    assert math.isfinite(first["final_eval_loss"]) and first["peak_device_mb"] > 0
    interrupted = tiny_config(tmp_path / "cut", algorithm, *settings)
    assert run_experiment(interrupted, show_progress=False, stop_after_round=1) is None
    second = run_experiment(interrupted, resume=True, show_progress=False)
    assert second["final_eval_loss"] == pytest.approx(first["final_eval_loss"], rel=1e-5)
    a, b = final_weights(uninterrupted), final_weights(interrupted)
    assert all(torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6) for name in a)
