"""`zofed bench step`: the cost of one ZO step against two forward passes, measured side by side.

For each (model, mode, dtype) it times, on the same model and batch: two forward passes; our
in-place 3-pass step with gaussian and with pool directions; and a reference MeZO-style step
written as in the MeZO paper's Algorithm 1 (global `torch.manual_seed`, z regenerated four
times, out-of-place `p.data = p.data + ...` updates). Every time is a median over repeats,
synchronised with the device, reported as a ratio to the two forwards measured in the same run,
next to the peaks of inference, of our ZO step and of a backprop step (forward + backward with
the gradients held; LoRA's in mode lora, the full model's in mode full), each its own window:
peak RSS always, peak device memory on an accelerator.

The model may be a ladder shape (`shape:llama-3.2-1b`, random weights): the batch is random
token ids, so no tokenizer is needed and the bench runs where GGUF support is missing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from zofed.device import peak_device_memory_mb, reset_peak_device_memory, resolve_device, timed
from zofed.dtypes import torch_dtype
from zofed.llm import LoadedModel, LoraSettings, apply_lora, load_model, trainable_view
from zofed.llm.shapes import build_shape, shape_name
from zofed.metrics import peak_rss_mb, reset_peak_rss
from zofed.zo import GaussianDirections, PoolDirections, Scratch, zo_step


def _interleaved_medians(works: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each callable, timed in turn within every repeat so drift hits all alike."""
    for work in works.values():
        work()  # warm-up: allocator, kernels, lazily built tables
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            times[name].append(timed(device, work))  # a pass's in-place adds are queued, not done, when it returns
    return {name: statistics.median(values) for name, values in times.items()}


def _peaks(work: Callable[[], object], device: torch.device) -> tuple[float, float | None]:
    """(peak RSS, peak device memory) in MiB of one call, each in a window of its own."""
    reset_peak_rss()
    reset_peak_device_memory(device)
    work()
    return peak_rss_mb(), peak_device_memory_mb(device)


def reference_mezo_step(params, loss_at: Callable[[], float], seed: int, mu: float, lr: float) -> None:
    """MeZO Algorithm 1 as published: global RNG reseeded, z drawn anew for every pass, out-of-place updates."""

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for param in params:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype, device=param.device)
            param.data = param.data + scale * mu * z

    perturb(1)
    loss_plus = loss_at()
    perturb(-2)
    loss_minus = loss_at()
    perturb(1)
    projected_grad = (loss_plus - loss_minus) / (2 * mu)
    torch.manual_seed(seed)
    for param in params:
        z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype, device=param.device)
        param.data = param.data - lr * projected_grad * z


def load_bench_model(model_name: str, dtype: str, device: torch.device) -> LoadedModel:
    """The model to measure; a ladder shape is built on the device without a tokenizer (random ids need none)."""
    shape = shape_name(model_name)
    if shape is None:
        return load_model(model_name, dtype, device)
    started = time.perf_counter()
    model = build_shape(shape, torch_dtype(dtype), device)
    return LoadedModel(model, None, model_name, model.config.num_hidden_layers, time.perf_counter() - started)


def bench_step(model_name: str, mode: str, dtype: str, batch_size: int, seq_len: int, repeats: int, pool_size: int,
               device: str = "cpu", reference: bool = True) -> dict:
    torch_device = resolve_device(device)
    loaded = load_bench_model(model_name, dtype, torch_device)
    if mode == "lora":
        loaded = apply_lora(loaded, LoraSettings(r=8, alpha=16), seed=0)
    view = trainable_view(loaded, mode)
    model = loaded.model
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator).to(torch_device)
    batch = {"input_ids": input_ids, "labels": input_ids}

    def loss_at() -> float:
        with torch.inference_mode():
            return float(model(**batch, use_cache=False).loss)  # the step's one host round trip

    # Tiny lr and mu keep the weights (and so the timings) where they started.
    mu, lr = 1e-3, 1e-9
    gaussian, pool, scratch = GaussianDirections(), PoolDirections(pool_size), Scratch()
    tensors = [view.tensors]  # rebound after each reference step, whose updates replace parameter storage
    params = [p for p in model.parameters() if p.requires_grad]

    def reference_step() -> None:
        with torch.random.fork_rng(devices=[torch_device] if torch_device.type == "cuda" else []):
            reference_mezo_step(params, loss_at, 1, mu, lr)
        tensors[0] = trainable_view(loaded, mode).tensors

    works = {
        "two_forwards": lambda: (loss_at(), loss_at()),
        "gaussian": lambda: zo_step(tensors[0], loss_at, 1, mu, lr, gaussian, scratch),
        "pool": lambda: zo_step(tensors[0], loss_at, 1, mu, lr, pool, scratch),
    }
    if reference:
        works["reference"] = reference_step
    peak_inference = _peaks(loss_at, torch_device)
    works["pool"]()  # a bf16/fp16 step builds its fused kernels on first use: outside the peak's window
    peak_zo = _peaks(works["pool"], torch_device)
    peak_zo_gaussian = _peaks(works["gaussian"], torch_device)
    medians = _interleaved_medians(works, repeats, torch_device)
    two_forwards, step_gaussian_s, step_pool_s = medians["two_forwards"], medians["gaussian"], medians["pool"]
    reference_s = medians.get("reference")

    def backprop() -> None:
        model.train()
        model(**batch, use_cache=False).loss.backward()

    peak_backprop = _peaks(backprop, torch_device)
    model.zero_grad(set_to_none=True)
    model.eval()

    def ratio(seconds: float | None, digits: int = 3) -> float | None:
        return None if seconds is None else round(seconds / two_forwards, digits)

    def mb(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "model": model_name,
        "mode": mode,
        "dtype": dtype,
        "device": str(torch_device),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": view.numel(),
        "batch": f"{batch_size}x{seq_len}",
        "threads": torch.get_num_threads(),
        "native_bf16": native_bf16(torch_device),
        "fused_low_precision": fused_low_precision(dtype),
        "forward_s": round(two_forwards / 2, 4),
        "zo_step_gaussian_s": round(step_gaussian_s, 4),
        "zo_step_pool_s": round(step_pool_s, 4),
        "reference_step_s": None if reference_s is None else round(reference_s, 4),
        "ratio_pool_to_two_forwards": ratio(step_pool_s),
        "ratio_gaussian_to_two_forwards": ratio(step_gaussian_s),
        "ratio_reference_to_two_forwards": ratio(reference_s),
        "speedup_vs_reference": None if reference_s is None else round(reference_s / step_pool_s, 2),
        "peak_rss_inference_mb": mb(peak_inference[0]),
        "peak_rss_zo_mb": mb(peak_zo[0]),
        "peak_rss_zo_gaussian_mb": mb(peak_zo_gaussian[0]),
        "peak_rss_backprop_mb": mb(peak_backprop[0]),
        "peak_device_inference_mb": mb(peak_inference[1]),
        "peak_device_zo_mb": mb(peak_zo[1]),
        "peak_device_zo_gaussian_mb": mb(peak_zo_gaussian[1]),
        "peak_device_backprop_mb": mb(peak_backprop[1]),
    }


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 natively (CPU: AVX512-BF16 or AMX-BF16), as a bench result must say."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fused_low_precision(dtype: str) -> bool | None:
    """Whether this run's bf16/fp16 passes used the fused kernel (zo/directions.py); None for fp32."""
    if dtype == "fp32":
        return None
    from zofed.zo import directions

    return any(kernel is not None for kernel in directions._FUSED_KERNELS.values())


def step_line(row: dict) -> str:
    """One human-readable line of a bench row."""

    def shown(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    memory = f"RSS inf/zo/bp {row['peak_rss_inference_mb']:.0f}/{row['peak_rss_zo_mb']:.0f}/{row['peak_rss_backprop_mb']:.0f} MB"
    if row["peak_device_zo_mb"] is not None:
        memory += (f"  device inf/zo/bp {row['peak_device_inference_mb']:.0f}/{row['peak_device_zo_mb']:.0f}/"
                   f"{row['peak_device_backprop_mb']:.0f} MB")
    return (f"{row['model']} {row['mode']:5s} {row['dtype']:5s} {row['device']} forward {row['forward_s']:.3f}s"
            f"  step/2fwd pool {row['ratio_pool_to_two_forwards']:.2f}  gaussian {row['ratio_gaussian_to_two_forwards']:.2f}"
            f"  reference {shown(row['ratio_reference_to_two_forwards'], '.2f')}"
            f"  speedup {shown(row['speedup_vs_reference'], '.1f')}x  {memory}"
            + ("" if row.get("fused_low_precision") is None else f"  fused {row['fused_low_precision']}"))
