"""ZorBA against full-parameter FedMeZO, FedKSeed and backprop FedAvg: peak client memory, loss, bytes.

Memory: each case is one client's round in a fresh process (`client_round_peak`, the same
function the start-up profile uses): the model is loaded, the peak-RSS window reset, the client
decodes its encoded downlink and trains a few local steps; the peak is that window's VmHWM. A
ZorBA client first puts its inactive layers in bf16 (a real client loads them so; this also copies
the model out of the weight file's memory map), then opens the window; it gets the plan's blocks for its
device class (`zorba.device_profile`, clients 0/1/2 = smallest/middle/largest budget), and its peak
is checked against its budget. Loss: the same config run by each method for `--rounds` rounds on
the local runtime (same data, sampling, seeds), final test loss and bytes per client per round.

    .venv/bin/python benchmarks/zorba_memory.py [--config configs/quickstart.yaml] [--steps 3] [--rounds 4]
        [--skip-loss] [key=value ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
FULL = ["trainable.mode=full", "clients=3", "clients_per_round=3", "zorba.device_profile=mixed"]
BASELINES = {
    "fedmezo": ["fedmezo.upload=seeds", "fedmezo.directions=pool"],
    "fedkseed": ["fedkseed.directions=pool"],
    "fedavg": ["fedavg.optimizer=sgd"],
}
ZO_LR = ["fedmezo.lr=1e-5", "fedmezo.mu=1e-3", "fedkseed.lr=1e-5", "fedkseed.mu=1e-3", "zorba.lr=1e-5", "zorba.mu=1e-3",
         "fedavg.lr=1e-5"]


def client_peak(config_json: str, client: int) -> dict:
    """One client's round in this (fresh) process; its peak RSS and, for ZorBA, its plan and budget."""
    from zofed.algorithms import build_algorithm
    from zofed.algorithms.zorba import DTYPES, current_plan
    from zofed.config import parse_config
    from zofed.runtime.codec import encode
    from zofed.runtime.experiment import build_experiment
    from zofed.runtime.memory_profile import client_round_peak

    config = parse_config(json.loads(config_json))
    experiment = build_experiment(config)
    method = build_algorithm(config.algorithm, config.algorithm_settings)
    state = method.init(experiment.view.state_dict(), config.seed)
    outbox = [encode(method.configure(state, 1, [client])[0])]
    extra, lower, dtype = {}, None, None
    if config.algorithm == "zorba":
        plan = current_plan(state.info)
        active = plan["active"][client]
        extra = {"active_blocks": active, "budget_mb": plan["budgets_mb"][client],
                 "predicted_mb": plan["predicted_mb"][client]}
        lower = [layer for layer in range(experiment.loaded.num_layers) if layer not in active]
        dtype = DTYPES[config.algorithm_settings.inactive_dtype]
    del state
    gc.collect()
    peak = client_round_peak(experiment, method, outbox, client, lower, dtype)
    return {"algorithm": config.algorithm, "client": client, **peak, "trainable_params": experiment.view.numel(),
            **extra}


def run_child(config, client: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config.to_dict(), handle)
    try:
        output = subprocess.run([sys.executable, __file__, "--child", handle.name, str(client)], check=True,
                                capture_output=True, text=True, env=CHILD_ENV).stdout
    finally:
        os.unlink(handle.name)
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--skip-loss", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/zorba_memory.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(client_peak(Path(args.child[0]).read_text(), int(args.child[1]))))
        return

    from zofed.config import load_config
    from zofed.machine import describe_machine
    from zofed.runtime.local import run_local
    from zofed.runtime.memory_profile import with_memory_profile

    common = [*FULL, *ZO_LR, f"local.local_steps={args.steps}", *args.overrides]
    zorba_config = with_memory_profile(load_config(args.config, [*common, "algorithm=zorba"]))
    profile = zorba_config.algorithm_settings.memory_profile
    print(f"profile: base {profile.base_mb:.0f} MB, block {profile.block_mb[0]:.1f} MB x {len(profile.block_mb)}",
          flush=True)
    memory = []
    for name, extra in BASELINES.items():
        memory.append(run_child(load_config(args.config, [*common, *extra, f"algorithm={name}"]), 0))
        print(f"{name:9s} peak {memory[-1]['peak_rss_mb']:8.1f} MB", flush=True)
    for client in range(3):
        memory.append(run_child(zorba_config, client))
        row = memory[-1]
        print(f"zorba c{client}  peak {row['peak_rss_mb']:8.1f} MB  budget {row['budget_mb']:8.1f} MB  "
              f"{len(row['active_blocks'])} active blocks", flush=True)
    fedmezo_peak = memory[0]["peak_rss_mb"]
    zorba_rows = [row for row in memory if row["algorithm"] == "zorba"]
    ratios = {
        f"zorba c{row['client']} / fedmezo full": round(row["peak_rss_mb"] / fedmezo_peak, 3) for row in zorba_rows
    } | {f"{row['algorithm']} / fedmezo full": round(row["peak_rss_mb"] / fedmezo_peak, 3) for row in memory[1:3]}
    within_budget = all(row["peak_rss_mb"] <= row["budget_mb"] for row in zorba_rows)

    losses = {}
    if not args.skip_loss:
        with tempfile.TemporaryDirectory() as root:
            for name in ["zorba", *BASELINES]:
                extra = BASELINES.get(name, [])
                config = load_config(args.config, [*common, *extra, f"algorithm={name}", f"rounds={args.rounds}",
                                                   f"output_dir={root}", f"name={name}", "eval.accuracy_examples=0"])
                if name == "zorba":
                    config = zorba_config.model_copy(update={"rounds": args.rounds, "output_dir": root, "name": name,
                                                             "eval": config.eval})
                summary = run_local(config, show_progress=False)
                per_round = config.sampled_per_round() * summary["rounds"]
                losses[name] = {"initial_test_loss": summary["initial_test_loss"],
                                "final_test_loss": summary["final_test_loss"],
                                "bytes_up_per_client_round": summary["bytes_up"] / per_round,
                                "bytes_down_per_client_round": summary["bytes_down"] / per_round,
                                "wall_s": summary["wall_s"]}
                print(f"{name:9s} test loss {summary['initial_test_loss']:.4f} -> {summary['final_test_loss']:.4f}  "
                      f"up {losses[name]['bytes_up_per_client_round']:.0f} B/client/round", flush=True)
    for name, value in ratios.items():
        print(f"{name:28s} {value}")
    print(f"every ZorBA client within its budget: {within_budget}")
    result = {"machine": describe_machine(), "config": args.config, "overrides": common, "steps": args.steps,
              "profile": profile.model_dump(), "memory": memory, "ratios": ratios,
              "zorba_within_budget": within_budget, "loss_at_equal_rounds": losses, "rounds": args.rounds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
