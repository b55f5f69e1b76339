import time

import pytest
import torch

from zofed.config import parse_config
from zofed.device import (
    check_dtype,
    describe_device,
    peak_device_memory_mb,
    reset_peak_device_memory,
    resolve_device,
    timed,
    to_device,
)
from zofed.errors import ZofedError

CUDA = torch.cuda.is_available()
MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.mark.skipif(CUDA or MPS, reason="auto picks the accelerator here")
def test_auto_is_the_cpu_without_an_accelerator():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_says_what_to_use(spec):
    with pytest.raises(ZofedError, match=f"device={spec} but torch sees no CUDA GPU.*use device=cpu or auto"):
        resolve_device(spec)


@pytest.mark.skipif(MPS, reason="this machine has MPS")
def test_mps_without_mps_says_what_to_use():
    with pytest.raises(ZofedError, match="device=mps but this machine has no usable MPS"):
        resolve_device("mps")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:", "tpu"])
def test_a_device_that_is_no_device(spec):
    with pytest.raises(ZofedError, match=f"device={spec} is not a device; use auto, cpu, cuda, cuda:N or mps"):
        resolve_device(spec)


def test_the_config_checks_the_device_syntax_and_accepts_fp16():
    config = parse_config({}, ["device=cuda:1", "dtype=fp16"])
    assert (config.device, config.dtype) == ("cuda:1", "fp16")
    assert parse_config({}).device == "cpu"  # the CPU path stays the default
    with pytest.raises(ZofedError, match="config key 'device'.*got 'gpu'"):
        parse_config({}, ["device=gpu"])


def test_on_the_cpu_nothing_moves_and_no_device_memory_is_reported():
    cpu = torch.device("cpu")
    batch = {"input_ids": torch.arange(4), "labels": torch.arange(4)}
    moved = to_device(batch, cpu)
    assert all(moved[key] is batch[key] for key in batch)  # the CPU path copies nothing
    reset_peak_device_memory(cpu)
    assert peak_device_memory_mb(cpu) is None
    calls = []
    seconds = timed(cpu, lambda: calls.append(time.sleep(0.05)))
    assert calls == [None] and 0.05 <= seconds < 5  # the work ran once and its time was measured around it
    assert describe_device(cpu) == {"type": "cpu", "torch": torch.__version__}
    check_dtype(torch.bfloat16, cpu)  # every dtype computes on the CPU


@needs_cuda
def test_cuda_peak_window_sees_an_allocation_and_resets():
    device = resolve_device("cuda")
    reset_peak_device_memory(device)
    base = peak_device_memory_mb(device)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
    assert peak_device_memory_mb(device) >= base + 63
    del block
    reset_peak_device_memory(device)
    assert peak_device_memory_mb(device) < base + 1
    assert describe_device(device)["name"]
