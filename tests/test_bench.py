import pytest
import torch

from zofed.bench import bench_step, reference_mezo_step
from zofed.cli import main

KEYS = {
    "model", "mode", "dtype", "device", "forward_s", "zo_step_gaussian_s", "zo_step_pool_s", "reference_step_s",
    "ratio_pool_to_two_forwards", "ratio_gaussian_to_two_forwards", "speedup_vs_reference",
    "peak_rss_inference_mb", "peak_rss_zo_mb", "peak_rss_backprop_mb",
    "peak_device_inference_mb", "peak_device_zo_mb", "peak_device_backprop_mb",
}


def test_reference_step_is_a_zo_descent_step():
    params = [torch.nn.Parameter(torch.ones(20))]
    loss = lambda: float((params[0].data ** 2).sum())  # noqa: E731
    before = loss()
    for seed in range(100):
        reference_mezo_step(params, loss, seed, mu=1e-3, lr=5e-3)
    assert loss() < 0.5 * before


def test_bench_step_reports_every_key_on_tiny_llama():
    row = bench_step("tiny-llama", "lora", "fp32", batch_size=1, seq_len=16, repeats=1, pool_size=1 << 16)
    assert KEYS <= set(row)
    assert all(row[key] > 0 for key in ("forward_s", "zo_step_pool_s", "reference_step_s", "peak_rss_zo_mb"))


def test_bench_step_on_a_ladder_shape_needs_no_tokenizer():
    row = bench_step("shape:tiny", "full", "fp32", batch_size=1, seq_len=16, repeats=1, pool_size=1 << 16,
                     device="cpu", reference=False)
    assert row["device"] == "cpu" and row["params"] == row["trainable_params"]
    assert row["reference_step_s"] is None and row["speedup_vs_reference"] is None
    assert row["peak_device_zo_mb"] is None  # the CPU has no device memory apart from RSS
    assert row["zo_step_pool_s"] > 0 and row["peak_rss_backprop_mb"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_step_on_cuda_reports_device_peaks():
    row = bench_step("shape:tiny", "full", "fp32", batch_size=1, seq_len=16, repeats=1, pool_size=1 << 16, device="cuda")
    assert row["device"].startswith("cuda")
    assert 0 < row["peak_device_inference_mb"] <= row["peak_device_backprop_mb"]


def test_bench_rejects_unknown_modes(capsys):
    assert main(["bench", "step", "--modes", "lora,half"]) == 2
    assert "--modes" in capsys.readouterr().err


def test_bench_rejects_unknown_shapes_and_devices(capsys):
    assert main(["bench", "step", "--model", "shape:llama-9b"]) == 2
    assert "unknown model shape 'llama-9b'" in capsys.readouterr().err
    assert main(["bench", "step", "--model", "shape:tiny", "--device", "tpu"]) == 2
    assert "device=tpu is not a device" in capsys.readouterr().err
