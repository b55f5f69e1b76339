"""FedSPZO against FedMeZO: layer-forwards and wall time to reach a common target validation loss.

Both methods run the same config (same seed, so the same partitions, client sampling, batches
and evaluation examples; the data hashes are checked equal) for the same rounds, evaluated
every round. By default FedSPZO uses FedMeZO's lr and mu from the config, so only the method
differs; `--fedspzo key=value` sets any FedSPZO setting (p1, p2, split_layer, lr, mu).

Target: the lowest validation loss both methods reach (the larger of their best losses), or
`--target`. For each method the cost of the first round at or below it: cumulative
layer-forwards (FedMeZO's are its forward passes × L), forward passes, client training seconds
(the clients' own time, no evaluation) and wall seconds (rounds including evaluation).
`speedup` is FedMeZO's cost over FedSPZO's (the issue's goal: >= 1.6x fewer layer-forwards).
`--fedspzo-rounds N` stops FedSPZO after N rounds (a default step costs 3.25 MeZO steps, so
fewer rounds give a rough equal-compute comparison at a fraction of the CPU time).

    .venv/bin/python benchmarks/fedspzo_vs_fedmezo.py --config configs/quickstart.yaml
    .venv/bin/python benchmarks/fedspzo_vs_fedmezo.py --config configs/gsm8k.yaml --fedspzo p2=8
    # tune FedSPZO without re-running FedMeZO:
    .venv/bin/python benchmarks/fedspzo_vs_fedmezo.py --workdir runs/spzo --reuse --fedspzo lr=1e-3
    # smoke on the random 4-layer model:
    .venv/bin/python benchmarks/fedspzo_vs_fedmezo.py --set model=tiny-llama --set rounds=3 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import results_header
import yaml
from zofed.config import load_config, overrides_read_by
from zofed.runtime.driver import round_rows, run_experiment

ALGORITHMS = ("fedmezo", "fedspzo")


def run_method(config_path: str, overrides: list[str], algorithm: str, workdir: Path, reuse: bool = False,
               name: str | None = None) -> dict:
    # one list of overrides serves both runs: each reads its own method's section (fedspzo.* is not FedMeZO's)
    config = load_config(config_path, overrides_read_by(algorithm, [*overrides, f"algorithm={algorithm}", "eval.every=1",
                                                                    f"output_dir={workdir}", f"name={name or algorithm}"]))
    started = time.perf_counter()
    if reuse and finished_with(config):
        print(f"reusing {config.run_dir}", file=sys.stderr, flush=True)
        summary = json.loads((config.run_dir / "summary.json").read_text())
    else:
        summary = run_experiment(config, overwrite=True, show_progress=False)
    history = round_rows(config.run_dir)
    totals = {"layer_forwards": 0, "forward_passes": 0, "train_s": 0.0, "wall_s": 0.0}
    curve = [{"round": 0, "eval_loss": summary["initial_eval_loss"], **totals}]
    for row in history:
        totals = {
            "layer_forwards": totals["layer_forwards"] + row["layer_forwards"],
            "forward_passes": totals["forward_passes"] + row["forward_passes"],
            "train_s": totals["train_s"] + sum(client["seconds"] for client in row["per_client"]),
            "wall_s": totals["wall_s"] + row["seconds"],
        }
        curve.append({"round": row["round"], "eval_loss": row["eval_loss"], "train_loss": row["train_loss"], **totals})
    return {
        "algorithm": algorithm,
        "settings": config.algorithm_settings.model_dump(),
        "resolved_config": config.to_dict(),
        "summary": summary,
        "curve": curve,
        "run_s": time.perf_counter() - started,
    }


def finished_with(config) -> bool:
    """Whether config.run_dir holds a finished run of exactly this config (so tuning one method reuses the other)."""
    saved, summary = config.run_dir / "config.yaml", config.run_dir / "summary.json"
    if not (summary.is_file() and saved.is_file()):
        return False

    def own(data: dict) -> dict:  # the other methods' sections (FedSPZO's settings for FedMeZO) do not matter
        return {key: value for key, value in data.items() if key not in config.methods or key == config.algorithm}

    return own(yaml.safe_load(saved.read_text())) == own(config.to_dict())


def first_reaching(curve: list[dict], target: float) -> dict | None:
    for point in curve:
        if point["eval_loss"] is not None and math.isfinite(point["eval_loss"]) and point["eval_loss"] <= target:
            return point
    return None


def compare(runs: dict[str, dict], target: float | None) -> dict:
    if target is None:
        target = max(min(p["eval_loss"] for p in run["curve"] if p["eval_loss"] is not None) for run in runs.values())
    reached = {name: first_reaching(run["curve"], target) for name, run in runs.items()}
    speedup = {}
    if all(point is not None and point["round"] > 0 for point in reached.values()):
        base, method = reached["fedmezo"], reached["fedspzo"]
        speedup = {key: base[key] / method[key] for key in ("layer_forwards", "forward_passes", "train_s", "wall_s")}
    return {"target_eval_loss": target, "reached": reached, "speedup_fedmezo_over_fedspzo": speedup}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--fedspzo", action="append", default=[], metavar="KEY=VALUE", help="FedSPZO setting (repeatable)")
    parser.add_argument("--target", type=float, default=None, help="target validation loss (default: the lowest both reach)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/fedspzo_vs_fedmezo_<name>.json)")
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--fedspzo-rounds", type=int, default=None,
                        help="run FedSPZO for only this many rounds (its step costs several MeZO steps: a rough "
                             "equal layer-forward budget saves CPU hours); default: the config's rounds")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a finished run in --workdir whose config is identical (e.g. FedMeZO while tuning FedSPZO)")
    args = parser.parse_args(argv)

    header = results_header.begin()
    base = load_config(args.config, args.set)
    fedmezo = base.methods.get("fedmezo") or load_config(args.config, [*args.set, "algorithm=fedmezo"]).algorithm_settings
    spzo = {"lr": fedmezo.lr, "mu": fedmezo.mu, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.fedspzo)}}
    overrides = [*args.set, *(f"fedspzo.{key}={value}" for key, value in spzo.items())]
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir or scratch)
        runs = {}
        for algorithm in ALGORITHMS:
            print(f"running {algorithm} ...", file=sys.stderr, flush=True)
            # FedSPZO variants get their own run directories, so a tuning sweep keeps each of them.
            name = "-".join([algorithm, *(s.replace("=", "") for s in args.fedspzo)]) if algorithm == "fedspzo" else algorithm
            rounds = [f"rounds={args.fedspzo_rounds}"] if algorithm == "fedspzo" and args.fedspzo_rounds else []
            runs[algorithm] = run_method(args.config, [*overrides, *rounds], algorithm, workdir, args.reuse, name)
    hashes = {name: run["summary"]["data_hashes"] for name, run in runs.items()}
    if hashes["fedmezo"] != hashes["fedspzo"]:
        raise SystemExit("the two runs saw different data; nothing to compare")
    configs = {name: run.pop("resolved_config") for name, run in runs.items()}
    document = results_header.relative(results_header.end(header, configs, {
        "benchmark": "fedspzo_vs_fedmezo",
        "config": args.config,
        "overrides": args.set,
        "fedspzo_settings": spzo,
        "data_hashes": hashes["fedmezo"],
        **compare(runs, args.target),
        "runs": runs,
    }), scratch)  # a temporary workdir is gone once written
    results_header.write(args.out or f"benchmarks/results/fedspzo_vs_fedmezo_{base.name}.json", document)
    print(json.dumps({k: document[k] for k in ("target_eval_loss", "reached", "speedup_fedmezo_over_fedspzo")}, indent=2))
    return document


if __name__ == "__main__":
    main()
