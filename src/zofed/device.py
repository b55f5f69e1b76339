"""Where the model runs: picking a torch device, the dtypes it supports, and its memory and clock.

`device: auto` takes CUDA if present, else MPS, else the CPU. On the CPU everything here is a
no-op or returns None, so the CPU path is the one zofed always had.

Peak device memory: CUDA keeps a true high-water mark per device (`max_memory_allocated`,
cleared by `reset_peak_memory_stats`). MPS keeps none, so its "peak" is the memory the MPS
allocator holds at the end of the window (`driver_allocated_memory`): a lower bound of the real
peak that misses short-lived activations, labelled as such in the docs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from zofed.errors import ZofedError
from zofed.lazy import lazy_import

torch = lazy_import("torch")  # imported on first use: `zofed list` imports the model table, which imports this, without torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str) -> torch.device:
    """`spec` as a torch device that exists on this machine; a ZofedError names what is missing."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise ZofedError("device=mps but this machine has no usable MPS (Apple GPU) backend; use device=cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec.partition(":")[2]
        if spec.startswith("cuda:") and not index_text.isdigit():
            raise ZofedError(f"device={spec} is not a device; use {DEVICE_CHOICES}")
        if not torch.cuda.is_available():
            raise ZofedError(f"device={spec} but torch sees no CUDA GPU (torch {torch.__version__}); use device=cpu or auto")
        index = int(index_text) if index_text else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ZofedError(f"device={spec} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    raise ZofedError(f"device={spec} is not a device; use {DEVICE_CHOICES}")


def check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a dtype the device cannot compute in, naming the one to use instead."""
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ZofedError(f"dtype=bf16 is not supported on {torch.cuda.get_device_name(device)}; use dtype=fp16 or fp32")
    if dtype == torch.bfloat16 and device.type == "mps" and not _mps_bf16():
        raise ZofedError("dtype=bf16 needs macOS 14 or newer on MPS; use dtype=fp16 or fp32")


def _mps_bf16() -> bool:
    try:
        torch.ones(1, dtype=torch.bfloat16, device="mps")
    except (RuntimeError, TypeError):
        return False
    return True


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_device_memory(device: torch.device) -> None:
    """Start a new peak-device-memory window (the device's twin of `metrics.reset_peak_rss`)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_device_memory_mb(device: torch.device) -> float | None:
    """Peak device memory since the last reset, in MiB; None on the CPU (peak RSS covers it there)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        torch.mps.synchronize()
        return torch.mps.driver_allocated_memory() / 2**20
    return None


def timed(device: torch.device, work: Callable[[], object]) -> float:
    """Seconds `work` takes including the device work it queued."""
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


def describe_device(device: torch.device) -> dict:
    """What a benchmark result was measured on: the accelerator, its memory and the software stack."""
    description: dict = {"type": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        description |= {
            "name": properties.name,
            "index": device.index,
            "memory_gb": round(properties.total_memory / 2**30, 1),
            "capability": f"{properties.major}.{properties.minor}",
            "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported(),
            "count": torch.cuda.device_count(),
        }
    elif device.type == "mps":
        description |= {"name": "Apple MPS", "bf16": _mps_bf16()}
    return description


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are (the first parameter's device; zofed never splits a model across devices)."""
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's tensors on `device`; on the CPU the very same tensors, so nothing is copied."""
    return {key: value.to(device) for key, value in batch.items()}
