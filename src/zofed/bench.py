"""`zofed bench step`: the cost of one ZO step against two forward passes, measured side by side.

For each (mode, dtype) it times, on the same model and batch: two forward passes; our in-place
3-pass step with gaussian and with pool directions; and a reference MeZO-style step written as
in the MeZO paper's Algorithm 1 (global `torch.manual_seed`, z regenerated four times,
out-of-place `p.data = p.data + ...` updates). Every time is a median over repeats, reported as
a ratio to the two forwards measured in the same run, next to the peak RSS of inference, of our
ZO step and of a backprop step (each its own peak-memory window).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from zofed.llm import LoraSettings, apply_lora, load_model, trainable_view
from zofed.metrics import peak_rss_mb, reset_peak_rss
from zofed.zo import GaussianDirections, PoolDirections, Scratch, zo_step


def _interleaved_medians(works: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable, timed in turn within every repeat so drift hits all alike."""
    for work in works.values():
        work()  # warm-up: allocator, kernels, lazily built tables
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            started = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _peak_mb(work: Callable[[], object]) -> float:
    reset_peak_rss()
    work()
    return peak_rss_mb()


def reference_mezo_step(params, loss_at: Callable[[], float], seed: int, mu: float, lr: float) -> None:
    """MeZO Algorithm 1 as published: global RNG reseeded, z drawn anew for every pass, out-of-place updates."""

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for param in params:
            z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            param.data = param.data + scale * mu * z

    perturb(1)
    loss_plus = loss_at()
    perturb(-2)
    loss_minus = loss_at()
    perturb(1)
    projected_grad = (loss_plus - loss_minus) / (2 * mu)
    torch.manual_seed(seed)
    for param in params:
        z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
        param.data = param.data - lr * projected_grad * z


def bench_step(model_name: str, mode: str, dtype: str, batch_size: int, seq_len: int, repeats: int, pool_size: int) -> dict:
    loaded = load_model(model_name, dtype)
    if mode == "lora":
        loaded = apply_lora(loaded, LoraSettings(r=8, alpha=16), seed=0)
    view = trainable_view(loaded, mode)
    model = loaded.model
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, len(loaded.tokenizer), (batch_size, seq_len), generator=generator)
    batch = {"input_ids": input_ids, "labels": input_ids}

    def loss_at() -> float:
        with torch.inference_mode():
            return float(model(**batch, use_cache=False).loss)

    # Tiny lr and mu keep the weights (and so the timings) where they started.
    mu, lr = 1e-3, 1e-9
    gaussian, pool, scratch = GaussianDirections(), PoolDirections(pool_size), Scratch()
    tensors = [view.tensors]  # rebound after each reference step, whose updates replace parameter storage
    params = [p for p in model.parameters() if p.requires_grad]

    def reference() -> None:
        with torch.random.fork_rng(devices=[]):
            reference_mezo_step(params, loss_at, 1, mu, lr)
        tensors[0] = trainable_view(loaded, mode).tensors

    works = {
        "two_forwards": lambda: (loss_at(), loss_at()),
        "gaussian": lambda: zo_step(tensors[0], loss_at, 1, mu, lr, gaussian, scratch),
        "pool": lambda: zo_step(tensors[0], loss_at, 1, mu, lr, pool, scratch),
        "reference": reference,
    }
    peak_inference = _peak_mb(loss_at)
    peak_zo = _peak_mb(works["pool"])
    peak_zo_gaussian = _peak_mb(works["gaussian"])
    medians = _interleaved_medians(works, repeats)
    two_forwards, step_gaussian_s, step_pool_s, reference_s = (
        medians["two_forwards"], medians["gaussian"], medians["pool"], medians["reference"]
    )
    forward_s = two_forwards / 2

    reset_peak_rss()
    model.train()
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    peak_backprop = peak_rss_mb()
    model.zero_grad(set_to_none=True)
    model.eval()
    del loss

    return {
        "model": model_name,
        "mode": mode,
        "dtype": dtype,
        "trainable_params": view.numel(),
        "batch": f"{batch_size}x{seq_len}",
        "threads": torch.get_num_threads(),
        "forward_s": round(forward_s, 4),
        "zo_step_gaussian_s": round(step_gaussian_s, 4),
        "zo_step_pool_s": round(step_pool_s, 4),
        "reference_step_s": round(reference_s, 4),
        "ratio_pool_to_two_forwards": round(step_pool_s / two_forwards, 3),
        "ratio_gaussian_to_two_forwards": round(step_gaussian_s / two_forwards, 3),
        "ratio_reference_to_two_forwards": round(reference_s / two_forwards, 3),
        "speedup_vs_reference": round(reference_s / step_pool_s, 2),
        "peak_rss_inference_mb": round(peak_inference, 1),
        "peak_rss_zo_mb": round(peak_zo, 1),
        "peak_rss_zo_gaussian_mb": round(peak_zo_gaussian, 1),
        "peak_rss_backprop_mb": round(peak_backprop, 1),
    }
