"""`lr: auto` against a hand-tuned lr: validation loss at equal rounds, and the probe's cost (issue 24, item 1).

For each task config (quickstart, GSM8K, Alpaca) and each method (FedMeZO, FedKSeed, DeComFL) on
SmolLM2-135M-Instruct: one run with `lr: auto` and the hand-tuned runs, all with the same config,
seed and rounds (so the same partitions, client sampling, batches and directions). Hand-tuned: the
shipped config's lr for FedMeZO (tuned in every config), and for FedKSeed and DeComFL (which take
the same MeZO step) that FedMeZO lr and, with `--grid two`, half of it, the better final validation
loss of the two, run here: the configs' fedkseed and decomfl sections hold the former shared
defaults (lr 1e-3, mu 1e-2), not tuned lrs. μ is each config's section's. The goal: auto's final validation loss within 5% of
the hand-tuned one, and the probe's forward passes at most 25% of the run's.

Runs are shrunk with `--set`/per-task overrides (rounds, local steps, evaluation sizes) to fit a CPU
budget; the JSON records every override.

    .venv/bin/python benchmarks/lr_auto.py                       # the issue's table
    .venv/bin/python benchmarks/lr_auto.py --tasks quickstart --methods fedmezo --set model=tiny-llama \
        --out /tmp/lr_auto_smoke.json                             # a smoke on the random 4-layer model
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import results_header
from zofed.config import load_config, read_config_file
from zofed.runtime.driver import run_experiment

ROOT = Path(__file__).resolve().parents[1]
# Per task: the config, and the overrides that shrink it to the CPU budget (same for every run of the task).
TASKS = {
    # the quickstart as shipped (12 rounds of 10 local steps), only its evaluations smaller
    "quickstart": ("configs/quickstart.yaml", ["eval.every=100", "eval.val_examples=32",
                                               "eval.accuracy_examples=0", "eval.test_examples=8"]),
    # the configs' 30 local steps, 10 of their 20 rounds, on 600 examples of at most 192 tokens
    "gsm8k": ("configs/gsm8k.yaml", ["rounds=10", "data.limit=600", "eval.every=100",
                                     "eval.val_examples=24", "eval.test_examples=8", "eval.accuracy_examples=0",
                                     "data.max_length=192"]),
    "alpaca": ("configs/alpaca.yaml", ["rounds=10", "data.limit=600", "eval.every=100", "eval.val_examples=24",
                                       "eval.test_examples=8", "eval.accuracy_examples=0", "data.max_length=192"]),
}
METHODS = ("fedmezo", "fedkseed", "decomfl")
LOSS_GOAL, COST_GOAL = 0.05, 0.25


def run(config_path: str, overrides: list[str], workdir: Path, name: str) -> dict:
    config = load_config(ROOT / config_path, [*overrides, f"output_dir={workdir}", f"name={name}"])
    started = time.perf_counter()
    summary = run_experiment(config, overwrite=True, show_progress=False)
    print(f"  {name}: final eval loss {summary['final_eval_loss']:.4f} in {time.perf_counter() - started:.0f} s",
          file=sys.stderr, flush=True)
    return summary


TUNED = ("fedmezo",)  # the methods whose lr the shipped configs tuned


def tuned_lrs(config_path: str, method: str, grid: str) -> tuple[list[float], str]:
    """The hand-tuned lrs to run: the config's own for a method it tuned, else the config's tuned FedMeZO lr,
    which FedKSeed and DeComFL share the step of (θ ← θ − lr·g·z per direction), and (`grid` "two") half of it."""
    document = read_config_file(ROOT / config_path)
    section = document.get(method)
    if method in TUNED and isinstance(section, dict) and "lr" in section:
        return [float(section["lr"])], "config"
    tuned = float(document["fedmezo"]["lr"])
    if grid == "one":
        return [tuned], "the config's tuned fedmezo lr"
    return [tuned / 2, tuned], "best of the config's tuned fedmezo lr and half of it"


def compare(task: str, method: str, shared: list[str], workdir: Path, grid: str) -> dict:
    config_path, task_overrides = TASKS[task]
    overrides = [*task_overrides, *shared, f"algorithm={method}"]
    auto = run(config_path, [*overrides, f"{method}.lr=auto"], workdir, f"{task}-{method}-auto")
    lrs, source = tuned_lrs(config_path, method, grid)
    hand = {lr: run(config_path, [*overrides, f"{method}.lr={lr}"], workdir, f"{task}-{method}-{lr:g}") for lr in lrs}
    best_lr = min(hand, key=lambda lr: hand[lr]["final_eval_loss"])
    best, probe = hand[best_lr], auto["lr_probe"]
    loss_gap = auto["final_eval_loss"] / best["final_eval_loss"] - 1
    cost = probe["forward_passes"] / auto["forward_passes"]
    return {
        "task": task, "method": method, "config": config_path, "overrides": overrides,
        "hand_tuned": {"source": source, "lr": best_lr,
                       "final_eval_loss": best["final_eval_loss"],
                       "grid": {f"{lr:g}": s["final_eval_loss"] for lr, s in hand.items()}},
        "auto": {"lr": probe["lr"], "final_eval_loss": auto["final_eval_loss"], "probe": probe,
                 "run_forward_passes": auto["forward_passes"]},
        "initial_eval_loss": auto["initial_eval_loss"],
        "loss_gap": loss_gap, "probe_cost": cost,
        "meets_loss_goal": loss_gap <= LOSS_GOAL, "meets_cost_goal": cost <= COST_GOAL,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--set", action="append", default=[], help="an override for every run, e.g. rounds=4")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lr_auto_issue24.json")
    parser.add_argument("--grid", choices=["one", "two"], default="two",
                        help="hand-tuned lrs where the config has none for the method: the tuned fedmezo lr (one), and half of it (two)")
    parser.add_argument("--workdir", type=Path, default=None, help="run directories (default: a temporary one)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="zofed-lr-auto-") as scratch:
        workdir = args.workdir or Path(scratch)
        for method in args.methods:  # method-major: each method across the data sets before the next
            for task in args.tasks:
                print(f"{task} / {method}", file=sys.stderr, flush=True)
                rows.append(compare(task, method, args.set, workdir, args.grid))
                write(args.out, rows, args.set, load_before, started)  # each comparison kept as it finishes
    document = write(args.out, rows, args.set, load_before, started)
    for row in document["rows"]:
        print(f"{row['task']:>10} {row['method']:>8}: auto lr {row['auto']['lr']:g} "
              f"loss {row['auto']['final_eval_loss']:.4f} vs hand {row['hand_tuned']['lr']:g} "
              f"{row['hand_tuned']['final_eval_loss']:.4f} (gap {row['loss_gap']:+.2%}), "
              f"probe {row['probe_cost']:.1%} of the run's forwards")


def write(out: Path, rows: list[dict], shared: list[str], load_before, started: float) -> dict:
    header = {**results_header.begin(), "load_average_before": list(load_before)}  # the shared results header
    configs = {f"{row['task']}/{row['method']}": results_header.resolve(row["config"], row["overrides"]) for row in rows}
    document = results_header.end(header, configs, {
        "benchmark": "benchmarks/lr_auto.py", "issue": 24,
        "wall_s": time.perf_counter() - started, "shared_overrides": shared,
        "goals": {"loss_gap_at_most": LOSS_GOAL, "probe_cost_at_most": COST_GOAL},
        "rows": rows,
        "all_meet_loss_goal": all(row["meets_loss_goal"] for row in rows),
        "all_meet_cost_goal": all(row["meets_cost_goal"] for row in rows),
    })
    results_header.write(out, document)  # paths relative to the repository, as every committed result
    return document


if __name__ == "__main__":
    main()
