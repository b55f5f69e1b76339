"""Peak RSS of one client's local round: FedMeZO (ZO) against backprop FedAvg with SGD and with AdamW, LoRA and full-parameter.

Each case runs in a fresh process: the model is loaded, the peak-memory window is reset, and the
client decodes its downlink message and trains for a few local steps; the reported peak is that
window's VmHWM, so it holds the resident model plus everything receiving and training added. `inference` runs forward passes
only, the floor every ZO client should stay close to. Backprop FedAvg runs twice: with plain SGD (no momentum, so no
optimiser state: gradients and the activations kept for backward), the baseline FedMeZO's paper compares with, and with
AdamW (two moments per trainable parameter besides), the optimiser fine-tuning usually uses.

    .venv/bin/python benchmarks/client_memory.py [--config configs/quickstart.yaml] [--steps 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import results_header
from zofed.runtime.prepare import CHILD_ENV as PROFILE_ENV

# glibc raises its mmap threshold after large frees and then keeps freed memory resident; a fixed
# threshold returns it, so the set-up's transient copies do not count in the client's window.
CHILD_ENV = {**os.environ, **PROFILE_ENV}

CASES = [
    ("inference", "lora"),
    ("fedmezo", "lora"),
    ("fedavg-sgd", "lora"),
    ("fedavg-adamw", "lora"),
    ("inference", "full"),
    ("fedmezo", "full"),
    ("fedmezo-seeds", "full"),
    ("fedavg-sgd", "full"),
    ("fedavg-adamw", "full"),
]
# Backprop FedAvg's cases: the optimiser each forces (fedavg.momentum stays at its default 0: plain SGD, as the paper's).
FEDAVG_OPTIMIZERS = {"fedavg-sgd": "sgd", "fedavg-adamw": "adamw"}


def case_overrides(algorithm: str, mode: str, steps: int) -> list[str]:
    chosen = "fedavg" if algorithm in FEDAVG_OPTIMIZERS else "fedmezo"  # inference: FedMeZO's client, forwards only
    overrides = [f"algorithm={chosen}", f"trainable.mode={mode}", f"local.local_steps={steps}"]
    if algorithm == "fedmezo-seeds":
        overrides.append("fedmezo.upload=seeds")
    if algorithm in FEDAVG_OPTIMIZERS:
        overrides.append(f"fedavg.optimizer={FEDAVG_OPTIMIZERS[algorithm]}")
    return overrides


def measure(config_path: str, algorithm: str, mode: str, steps: int) -> dict:
    import torch

    from zofed.algorithms import build_algorithm
    from zofed.config import load_config
    from zofed.metrics import peak_rss_mb, reset_peak_rss
    from zofed.runtime.codec import decode, encode
    from zofed.runtime.experiment import build_experiment

    config = load_config(config_path, case_overrides(algorithm, mode, steps))
    experiment = build_experiment(config)
    method = build_algorithm(config.algorithm, config.algorithm_settings)
    # What a real client receives: the encoded downlink, with no server state in its process.
    outbox = [encode(method.configure(method.init(experiment.view.state_dict(), config.seed), 1, [0])[0])]
    gc.collect()
    env = experiment.client_env(1, 0)
    resident_mb = peak_rss_mb()
    reset_peak_rss()
    if algorithm == "inference":
        outbox.clear()
        for batch in env.batches:
            env.loss(batch)
            env.loss(batch)
    else:
        # pop: the client owns the only reference, so train() can free the downlink once loaded
        method.train(decode(outbox.pop()), env)
    return {
        "algorithm": algorithm,
        "mode": mode,
        "optimizer": FEDAVG_OPTIMIZERS.get(algorithm),
        "model": config.model,
        "dtype": config.dtype,
        "trainable_params": experiment.view.numel(),
        "batch_size": config.local.batch_size,
        "local_steps": steps,
        "resident_before_mb": round(resident_mb, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("ALGORITHM", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/client_memory.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.config, *args.one, args.steps)))
        return
    header = results_header.begin()
    rows = []
    for algorithm, mode in CASES:
        output = subprocess.run(
            [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps), "--one", algorithm, mode],
            check=True, capture_output=True, text=True, env=CHILD_ENV,
        ).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(f"{algorithm:13s} {mode:5s} peak RSS {rows[-1]['peak_rss_mb']:8.1f} MB", flush=True)
    by_case = {(row["algorithm"], row["mode"]): row["peak_rss_mb"] for row in rows}
    ratios = {}
    for mode in ("lora", "full"):
        for zo in ("fedmezo", "fedmezo-seeds"):
            for backprop in FEDAVG_OPTIMIZERS:
                if (zo, mode) in by_case:  # FedMeZO's memory as a fraction of backprop's: the paper's "about half"
                    ratios[f"{mode}: {zo}/{backprop}"] = round(by_case[(zo, mode)] / by_case[(backprop, mode)], 3)
        ratios[f"{mode}: fedmezo/inference"] = round(by_case[("fedmezo", mode)] / by_case[("inference", mode)], 3)
    for name, value in ratios.items():
        print(f"{name:36s} {value}")
    configs = {f"{algorithm} {mode}": results_header.resolve(args.config, case_overrides(algorithm, mode, args.steps))
               for algorithm, mode in CASES}
    results_header.write(args.out, results_header.end(header, configs, {"config": args.config, "cases": rows, "ratios": ratios}))


if __name__ == "__main__":
    main()
