"""Convergence of pool vs exact Gaussian directions on the quickstart, over several seeds.

Same config, data, partitions and client sampling per seed; only `fedmezo.directions` differs.
Prints each run's final test loss and the mean ± std per sampler, and writes JSON with the
machine description.

    .venv/bin/python benchmarks/pool_vs_gaussian.py [--seeds 0 1 2] [--rounds 12] [override ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import results_header
from zofed.config import load_config
from zofed.runtime.driver import run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/pool_vs_gaussian.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs, configs = [], {}
    header = results_header.begin()
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            for directions in ("gaussian", "pool"):
                config = load_config(
                    args.config,
                    [*args.overrides, f"seed={seed}", f"rounds={args.rounds}", f"fedmezo.directions={directions}",
                     f"name={directions}-{seed}", f"output_dir={scratch}"],
                )
                configs[f"{directions}-{seed}"] = {**config.to_dict(), "output_dir": "<scratch>"}
                summary = run_experiment(config, show_progress=False)
                runs.append({"seed": seed, "directions": directions, **summary})
                print(f"seed {seed} {directions:8s} test loss {summary['initial_test_loss']:.4f} -> "
                      f"{summary['final_test_loss']:.4f}  accuracy {summary['test_accuracy']}", flush=True)
                # Written after every run, so a long benchmark that is stopped keeps the pairs it finished.
                _write(args, runs, header, configs)
    for directions, summary in _write(args, runs, header, configs).items():
        print(f"{directions:8s} final test loss {summary['mean']:.4f} ± {summary['std']:.4f}")


def _write(args: argparse.Namespace, runs: list[dict], header: dict, configs: dict) -> dict:
    by_sampler = {}
    for directions in ("gaussian", "pool"):
        finals = [run["final_test_loss"] for run in runs if run["directions"] == directions]
        if finals:
            by_sampler[directions] = {"mean": statistics.mean(finals),
                                      "std": statistics.stdev(finals) if len(finals) > 1 else 0.0}
    result = results_header.end(header, configs, {"config": args.config, "seeds": args.seeds, "rounds": args.rounds,
                                                  "overrides": args.overrides, "runs": runs, "final_test_loss": by_sampler})
    results_header.write(args.out, result)
    return by_sampler


if __name__ == "__main__":
    main()
