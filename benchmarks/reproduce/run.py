"""Reproduce a seed paper's headline claim at this CPU's scale: `run.py CLAIM [--set KEY=VALUE ...]`.

Claims (each writes JSON + plots, with the machine description, to
benchmarks/results/reproduce/<claim>/; the runs themselves go to runs/reproduce/<claim>/, which
is not committed, and a finished run there is reused when the command is repeated):

  fedmezo-memory   FedMeZO's ZO client against backprop FedAvg with SGD (the paper's baseline) and with
                   AdamW, peak RSS, LoRA and full-parameter.
                   Reads benchmarks/results/client_memory.json (benchmarks/client_memory.py);
                   --rerun measures it again first.
  fedmezo-lr       the five personalised learning-rate strategies on a Dirichlet-0.1 split
                   (fedmezo_lr.yaml): which reaches the target validation loss first, and whether
                   the loss decreases at every evaluation.
  fedkseed-bytes   uplink/downlink bytes per client per round of fedkseed, fedmezo (weights upload)
                   and decomfl from the byte ledger (`zofed compare` on fedkseed_bytes.yaml).
  zorba-memory     ZorBA's clients (device profile `mixed`) against full-parameter FedMeZO, FedKSeed
                   and backprop FedAvg: peak RSS, budgets, loss at equal rounds, bytes. Reads
                   benchmarks/results/zorba_memory.json (benchmarks/zorba_memory.py); --rerun
                   measures it again first (about 25 minutes here).
  fedspzo-quickstart, fedspzo-gsm8k
                   FedSPZO against FedMeZO: layer-forwards and wall time to a common target
                   validation loss (benchmarks/fedspzo_vs_fedmezo.py on fedspzo_*.yaml);
                   --fedspzo KEY=VALUE sets FedSPZO's p1, p2, split_layer, lr, mu (a variant:
                   results in a subdirectory named after the settings; FedMeZO's run is reused).

    .venv/bin/python benchmarks/reproduce/run.py fedmezo-lr
    .venv/bin/python benchmarks/gamlpp_heterogeneous.py --reproduce benchmarks/reproduce/gamlpp.yaml  # GAM-LPP
    .venv/bin/python benchmarks/reproduce/run.py fedspzo-gsm8k --set data.path=/my/gsm8k/train.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from zofed.compare import run_compare  # noqa: E402
from zofed.config import load_config  # noqa: E402
from zofed.runtime.driver import round_rows, run_experiment  # noqa: E402

import results_header  # noqa: E402
from repo_paths import from_repo_root  # noqa: E402

STRATEGIES = ("frozen", "random", "round-wise", "five-round", "model-diff")
RESULTS = ROOT / "benchmarks" / "results" / "reproduce"
RUNS = ROOT / "runs" / "reproduce"


def fedmezo_memory(args: argparse.Namespace, out: Path) -> dict:
    source = ROOT / "benchmarks" / "results" / "client_memory.json"
    if args.rerun or not source.is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "client_memory.py"), "--out", str(source)], check=True)
    measured = json.loads(source.read_text())
    peaks = {(case["algorithm"], case["mode"]): case["peak_rss_mb"] for case in measured["cases"]}
    document = {
        "claim": "FedMeZO: a ZO client needs about inference memory, about half of backprop FedAvg's (SGD)",
        "source": str(source.relative_to(ROOT)),
        **measured,
        "peak_rss_mb": {f"{a} {m}": v for (a, m), v in peaks.items()},
    }
    figure, axis = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
    labels = ["\n".join([*a.split("-"), m]) for a, m in peaks]  # fedavg-adamw: one word a line, so labels fit
    colors = {"inference": "tab:gray", "fedavg-sgd": "tab:orange", "fedavg-adamw": "tab:red"}
    axis.bar(labels, list(peaks.values()), color=[colors.get(a, "tab:blue") for a, _ in peaks])
    axis.set(ylabel="peak client RSS (MB)", title="client peak RSS: ZO (fedmezo) vs backprop (fedavg SGD, AdamW)")
    axis.tick_params(axis="x", labelsize=7)
    axis.grid(alpha=0.3, axis="y")
    figure.savefig(out / "memory.png", dpi=110)
    return document


def fedmezo_lr(args: argparse.Namespace, out: Path) -> dict:
    config_path = HERE / "fedmezo_lr.yaml"
    runs = {}
    for strategy in STRATEGIES:
        config = load_config(config_path, [*args.set, f"fedmezo.lr_strategy={strategy}", f"name={strategy}",
                                           f"output_dir={RUNS / 'fedmezo-lr'}"])
        if not (config.run_dir / "summary.json").is_file():
            print(f"running lr_strategy={strategy} in {config.run_dir}", file=sys.stderr, flush=True)
            run_experiment(config, resume=config.run_dir.exists(), overwrite=config.run_dir.exists(), show_progress=False)
        summary = json.loads((config.run_dir / "summary.json").read_text())
        history = round_rows(config.run_dir)
        curve = [{"round": 0, "eval_loss": summary["initial_eval_loss"], "wall_s": 0.0}]
        for row in history:
            curve.append({"round": row["round"], "eval_loss": row["eval_loss"], "train_loss": row["train_loss"],
                          "wall_s": curve[-1]["wall_s"] + row["seconds"]})
        losses = [p["eval_loss"] for p in curve if p["eval_loss"] is not None]
        runs[strategy] = {"run_dir": str(config.run_dir), "summary": summary, "curve": curve, "data_hashes": summary["data_hashes"],
                          "decreasing_every_eval": all(b < a for a, b in zip(losses, losses[1:])),
                          "evals_decreasing": sum(b < a for a, b in zip(losses, losses[1:])),
                          "evals": len(losses) - 1}
    if len({json.dumps(r["data_hashes"], sort_keys=True) for r in runs.values()}) != 1:
        raise SystemExit("the strategies saw different data; delete runs/reproduce/fedmezo-lr and run again")
    # Target: the lowest validation loss every strategy reaches, so each has a first round at it.
    target = max(min(p["eval_loss"] for p in r["curve"] if p["eval_loss"] is not None) for r in runs.values())
    for run in runs.values():
        run["round_to_target"] = next(p["round"] for p in run["curve"] if p["eval_loss"] is not None
                                      and p["eval_loss"] <= target)
    first = min(run["round_to_target"] for run in runs.values())
    fastest = [strategy for strategy, run in runs.items() if run["round_to_target"] == first]  # ties are common
    figure, axis = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for strategy, run in runs.items():
        points = [p for p in run["curve"] if p["eval_loss"] is not None]
        axis.plot([p["round"] for p in points], [p["eval_loss"] for p in points], marker="o", markersize=3, label=strategy)
    axis.axhline(target, color="gray", linestyle=":", label="target")
    axis.set(xlabel="round", ylabel="validation loss", title="FedMeZO lr strategies, Dirichlet 0.1")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.savefig(out / "loss_vs_round.png", dpi=110)
    return {"claim": "FedMeZO: loss decreases at every evaluation; personalised lr strategies converge faster",
            "config": str(config_path.relative_to(ROOT)), "overrides": args.set,
            "target_eval_loss": target, "fastest": fastest,
            "table": {s: {k: r[k] for k in ("round_to_target", "decreasing_every_eval", "evals_decreasing", "evals")}
                      | {"final_eval_loss": r["summary"]["final_eval_loss"],
                         "final_test_loss": r["summary"].get("final_test_loss")} for s, r in runs.items()},
            "runs": runs}


def fedkseed_bytes(args: argparse.Namespace, out: Path) -> dict:
    # Relative paths, so the committed results.json/results.md do not name this checkout.
    config, runs_dir = from_repo_root(HERE / "fedkseed_bytes.yaml", RUNS / "fedkseed-bytes")
    document = run_compare(config, args.set, ["fedkseed", "fedmezo", "decomfl"], out=runs_dir, show_progress=False)
    for name in ("results.md", "loss_vs_bytes.png"):
        shutil.copy(RUNS / "fedkseed-bytes" / name, out / name)
    # Per client per round from the ledger, round by round: the first contact downloads weights,
    # later rounds are the steady state the seed methods are designed for.
    rounds = {}
    for run in document["runs"]:
        rows = round_rows(Path(run["run_dir"]))
        rounds[run["algorithm"]] = [{"round": row["round"], "up": row["bytes_up"] / len(row["clients"]),
                                     "down": row["bytes_down"] / len(row["clients"]),
                                     "up_by_kind": row["bytes_up_by_kind"], "down_by_kind": row["bytes_down_by_kind"]}
                                    for row in rows]
    per_round = {a: {"up": rows[-1]["up"], "down": rows[-1]["down"]} for a, rows in rounds.items()}
    ratios = {f"{a} / fedkseed uplink": per_round[a]["up"] / per_round["fedkseed"]["up"] for a in per_round}
    figure, axis = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    names = list(per_round)
    axis.bar([f"{a}\nup" for a in names], [per_round[a]["up"] for a in names], color="tab:blue")
    axis.bar([f"{a}\ndown" for a in names], [per_round[a]["down"] for a in names], color="tab:orange")
    axis.set_yscale("log")
    axis.set(ylabel="bytes per client (log)", title="communication per client in the last round (byte ledger)")
    axis.tick_params(axis="x", labelsize=7)
    axis.grid(alpha=0.3, axis="y")
    figure.savefig(out / "bytes_per_round.png", dpi=110)
    return {"claim": "FedKSeed: under 18 kB per client per round instead of a model's worth",
            "last_round_per_client": per_round, "uplink_ratios": ratios, "per_round": rounds, **document}


def fedspzo(config_name: str):
    def run(args: argparse.Namespace, out: Path) -> dict:
        import fedspzo_vs_fedmezo

        (config,) = from_repo_root(HERE / f"fedspzo_{config_name}.yaml")
        argv = ["--config", str(config), "--out", str(out / "results.json"),
                "--workdir", str(RUNS / f"fedspzo-{config_name}"), "--reuse"]
        argv += [f"--set={s}" for s in args.set] + [f"--fedspzo={s}" for s in args.fedspzo]
        if args.fedspzo_rounds:
            argv += ["--fedspzo-rounds", str(args.fedspzo_rounds)]
        document = fedspzo_vs_fedmezo.main(argv)
        figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
        for axis, key, label in ((axes[0], "layer_forwards", "cumulative layer-forwards"),
                                 (axes[1], "wall_s", "cumulative wall time (s)")):
            for name, run in document["runs"].items():
                points = [p for p in run["curve"] if p["eval_loss"] is not None and math.isfinite(p["eval_loss"])]
                axis.plot([p[key] for p in points], [p["eval_loss"] for p in points], marker="o", markersize=3, label=name)
            axis.axhline(document["target_eval_loss"], color="gray", linestyle=":", label="target")
            axis.set(xlabel=label, ylabel="validation loss")
            axis.grid(alpha=0.3)
            axis.legend()
        figure.suptitle(f"FedSPZO vs FedMeZO ({config_name})")
        figure.savefig(out / "loss_vs_compute.png", dpi=110)
        return {"claim": "FedSPZO: 1.6-7x less computation than ZO baselines to the same loss", **document}
    return run


def zorba_memory(args: argparse.Namespace, out: Path) -> dict:
    source = ROOT / "benchmarks" / "results" / "zorba_memory.json"
    if args.rerun or not source.is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zorba_memory.py"), "--steps", "2", "--rounds", "3",
                        "--out", str(source), "data.limit=300", "eval.test_examples=32", "eval.val_examples=16",
                        "local.batch_size=2", *args.set], check=True)
    measured = json.loads(source.read_text())
    peaks = {(f"{row['algorithm']} c{row['client']}" if row["algorithm"] == "zorba" else row["algorithm"]):
             (row["peak_rss_mb"], row.get("budget_mb")) for row in measured["memory"]}
    figure, axis = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    axis.bar(list(peaks), [peak for peak, _ in peaks.values()],
             color=["tab:green" if name.startswith("zorba") else "tab:blue" for name in peaks])
    for index, (_, budget) in enumerate(peaks.values()):
        if budget is not None:
            axis.hlines(budget, index - 0.4, index + 0.4, colors="black", linestyles="dashed")
    axis.set(ylabel="peak client RSS (MB)", title="full-parameter client round: ZorBA (dashed: budget) vs baselines")
    axis.grid(alpha=0.3, axis="y")
    figure.savefig(out / "memory.png", dpi=110)
    return {"claim": "ZorBA: up to 62.41% less client memory than its baselines",
            "source": str(source.relative_to(ROOT)), **measured}


CLAIMS = {
    "zorba-memory": zorba_memory,
    "fedmezo-memory": fedmezo_memory,
    "fedmezo-lr": fedmezo_lr,
    "fedkseed-bytes": fedkseed_bytes,
    "fedspzo-quickstart": fedspzo("quickstart"),
    "fedspzo-gsm8k": fedspzo("gsm8k"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("claim", choices=sorted(CLAIMS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--fedspzo", action="append", default=[], metavar="KEY=VALUE", help="FedSPZO setting (fedspzo-*)")
    parser.add_argument("--fedspzo-rounds", type=int, default=None, help="fedspzo-*: FedSPZO runs only this many rounds")
    parser.add_argument("--rerun", action="store_true", help="fedmezo-memory: measure again")
    args = parser.parse_args()
    out = RESULTS / args.claim
    if args.fedspzo:  # a tuning variant: next to the default's results, not over them
        out = out / ("fedspzo_" + "_".join(setting.replace("=", "-") for setting in args.fedspzo))
    out.mkdir(parents=True, exist_ok=True)
    header = results_header.begin()
    document = CLAIMS[args.claim](args, out)
    # Measured here, not by a benchmark with its own header, nor read from a result older than the header:
    if "commit" not in document and "not_recorded" not in document:
        document = results_header.end(header, results_header.configs_from_run_dirs(results_header.run_dirs(document)),
                                      document)
    results_header.write(out / "results.json", document)
    print(f"results in {out.relative_to(ROOT)}/", file=sys.stderr)


if __name__ == "__main__":
    main()
