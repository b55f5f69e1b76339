"""Measure a block method's client memory model: V(k active layers) = base + Σ m_l, by profiling.

The profile runs in a child process of its own, as a client would: it builds the run's model and
data, then for k = 1, a quarter, half and all layers active keeps the other layers in the
method's low precision (without full-precision copies, out of the weight file's memory map),
resets the peak-RSS window and runs client 0's round as it would arrive: decode the encoded
downlink (the weights in the client's precision), load it, one local step (`client_round_peak`,
which benchmarks/zorba_memory.py uses for every method). The peaks are fitted by least squares to
base + m·k; each layer's m_l is m scaled by its share of the layers' bytes, never below what
moving its bytes to full precision costs (the floor matters on tiny models, where the peaks are
interpreter noise), and base is the upper envelope max_k(peak_k − Σ_{l<k} m_l), so the model never
under-predicts a measured point. A run keeps its profile in config.yaml, and `--resume` reuses it.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from zofed.config import RunConfig, parse_config
from zofed.errors import ZofedError

# glibc keeps freed memory resident after large frees unless the mmap threshold is fixed; a
# client that lowers layers must give the full-precision copies back for its peak to fall.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def needs_profile(config: RunConfig) -> bool:
    return config.algorithm_settings.needs_memory_profile


def with_memory_profile(config: RunConfig, resume: bool = False) -> RunConfig:
    """`config` with the algorithm's memory profile filled: the run's own on resume, else measured."""
    if not needs_profile(config):
        return config
    profile = _saved_profile(config) if resume else None
    if profile is None:
        profile = measure_profile(config)
    raw = config.to_dict()
    return parse_config(raw | {config.algorithm: {**raw[config.algorithm], "memory_profile": profile}})


def _saved_profile(config: RunConfig) -> dict | None:
    saved = config.run_dir / "config.yaml"
    if not saved.is_file():
        return None
    section = (yaml.safe_load(saved.read_text()) or {}).get(config.algorithm) or {}
    return section.get("memory_profile")


def measure_profile(config: RunConfig) -> dict:
    with tempfile.TemporaryDirectory(prefix="zofed-profile-") as scratch:
        config_path = Path(scratch) / "config.json"
        config_path.write_text(json.dumps(config.to_dict()))
        result = subprocess.run(
            [sys.executable, "-m", "zofed.runtime.memory_profile", str(config_path)],
            capture_output=True, text=True, env={**os.environ, **CHILD_ENV},
        )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise ZofedError(f"measuring the client memory profile failed ({lines[-1]}); "
                         f"give {config.algorithm}.memory_profile in the config instead")
    return json.loads(result.stdout.strip().splitlines()[-1])


def profile_points(num_layers: int) -> list[int]:
    return sorted({1, max(1, num_layers // 4), max(1, num_layers // 2), num_layers})


def client_round_peak(experiment, algorithm, outbox: list[bytes], client: int, lower: list[int] | None,
                      dtype=None, kept=None) -> dict:
    """One client's round as its own process runs it, from the downlink's bytes; peak RSS of the round.

    `outbox` holds the encoded downlink and nothing else may (it is popped, so the bytes can go
    once decoded); they are resident when the window opens, as bytes from the network would be.
    `lower`: layers to hold in `dtype` for the whole round (lowered before the window opens, so the
    window leaves out the full-precision load before it), or None. `kept`: the client's kept copy
    (`KeptCopy`), loaded and saved inside the window, or None.
    """
    from contextlib import nullcontext

    from zofed.metrics import peak_rss_mb, reset_peak_rss
    from zofed.runtime.client import receive_model_
    from zofed.runtime.codec import decode
    env = experiment.client_env(1, client)
    with nullcontext() if lower is None else env.split.lowered(lower, dtype, keep_master=False):
        gc.collect()
        resident = peak_rss_mb()
        reset_peak_rss()
        received = receive_model_(decode(outbox.pop()), env.tensors, env.names, kept)
        algorithm.train(received, env)
        peak = peak_rss_mb()
    return {"resident_before_mb": round(resident, 1), "peak_rss_mb": round(peak, 1)}


def _measure(config: RunConfig) -> dict:
    from zofed.algorithms import build_algorithm
    from zofed.algorithms.zorba import DTYPES, client_precision
    from zofed.messages import Message
    from zofed.runtime.codec import encode
    from zofed.runtime.experiment import build_experiment, prepare_data
    settings = config.algorithm_settings
    config = parse_config(config.to_dict() | {"local": {**config.to_dict()["local"], "local_steps": 1}})
    experiment = build_experiment(config, prepare_data(config))
    algorithm = build_algorithm(config.algorithm, settings)
    split = experiment.client_env(1, 0).split
    layers = split.num_layers
    low = DTYPES[settings.inactive_dtype]
    block_params = [0] * layers
    saved_bytes = [0.0] * layers
    for tensor, layer in zip(experiment.view.tensors, split.tensor_layers):
        if 0 <= layer < layers:
            block_params[layer] += tensor.numel()
    module_list = split._layers[2]
    for layer in range(layers):
        for tensor in [*module_list[layer].parameters(), *module_list[layer].buffers()]:
            if tensor.is_floating_point():
                saved_bytes[layer] += tensor.numel() * (tensor.element_size() - low.itemsize)
    if min(block_params) == 0:
        raise ZofedError("every layer needs trainable tensors for a block profile; train all layers")
    # the model's own tensors, not a copy: the downlink's values do not matter here, its size does
    weights = dict(zip(experiment.view.names, experiment.view.tensors))
    points = []
    for active in profile_points(layers):
        config_of_round = {"lr": 0.0, "mu": settings.mu, "directions": settings.directions,
                           "pool_size": settings.pool_size, "inactive_dtype": settings.inactive_dtype,
                           "step_loss": settings.step_loss, "active": list(range(active))}
        outbox = [encode(Message(kind="weights", round=1, config=config_of_round,
                                 tensors=client_precision(weights, range(active), low)))]
        peak = client_round_peak(experiment, algorithm, outbox, 0, list(range(active, layers)), low)["peak_rss_mb"]
        points.append({"active_blocks": float(active), "peak_mb": peak})
    ks = np.array([p["active_blocks"] for p in points])
    peaks = np.array([p["peak_mb"] for p in points])
    slope = float(np.polyfit(ks, peaks, 1)[0]) if len(points) > 1 else 0.0
    share = np.array(saved_bytes) / max(float(np.mean(saved_bytes)), 1.0)
    floor = np.array(saved_bytes) / 2**20
    block_mb = np.maximum(slope * share, floor)
    cumulative = np.concatenate([[0.0], np.cumsum(block_mb)])
    base = float(max(peak - cumulative[int(k)] for k, peak in zip(ks, peaks)))
    return {
        # rounded up, so the rounding cannot make the model under-predict a measured point
        "base_mb": math.ceil(base * 10) / 10,
        "block_mb": [math.ceil(float(value) * 1000) / 1000 for value in block_mb],
        "block_params": block_params,
        "points": points,
        "source": f"measured ({settings.inactive_dtype} inactive layers, batch {config.local.batch_size})",
    }


if __name__ == "__main__":
    raw = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(_measure(parse_config(raw))))
