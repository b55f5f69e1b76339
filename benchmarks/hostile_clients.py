"""One hostile client of 8 on the real model: clean run vs attacked without and with robust aggregation.

SmolLM2-135M + LoRA (configs/quickstart.yaml) trained by FedMeZO, 8 clients all sampled every
round, client 3 hostile. For each hostile mode (scale ×1e3, sign-flip, random, nan) three runs on
the same data, sampling and seeds: the clean run (shared by all modes), the attack with the
method's plain mean, and the attack with the robust option that fits the upload:
  weights  FedMeZO uploading weights, robust.aggregator=trimmed-mean (cuts 1 of 8 at each end)
  seeds    FedMeZO uploading (seed, g) records, robust.clip_scalar (g clipped to [-c, c])
Goal: final test loss with robust aggregation within 5% of the clean run. Reported next to the
initial test loss, so how much training there was to protect is visible too.

`--runtime flower-sim` plays every case on Flower's simulation engine instead: the hostile client
corrupts its replies on the client side of the transport (benchmarks/hostile_client_app.py, the
same corruption as the in-process `faults.hostile_*`), the server screens and aggregates them in
the one round body every runtime shares. Each case is then a whole `flwr run` (its own SuperLink,
workers loading the model), so it costs minutes more than the local runtime's; results are
compared with the local runtime's for the same upload when those are in the output file.

    PYTHONPATH=src .venv/bin/python benchmarks/hostile_clients.py [--upload weights] [--rounds 2]
        [--runtime local|flower-sim]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODES = ("scale", "sign-flip", "random", "nan")
HOSTILE_CLIENT = 3
TOLERANCE = 0.05
FAULTS_ENV = "ZOFED_BENCH_FAULTS"  # read by benchmarks/hostile_client_app.py (its ENV): the attack
ROBUST = {"weights": ["robust.aggregator=trimmed-mean", "robust.trim_fraction=0.125"],
          "seeds": ["robust.clip_scalar={clip}"]}


def overrides(args) -> list[str]:
    return [
        "clients=8", "clients_per_round=8", f"rounds={args.rounds}", f"local.local_steps={args.local_steps}",
        f"local.batch_size={args.batch_size}", f"data.limit={args.limit}", f"eval.every={args.rounds + 1}",
        "eval.val_examples=1", f"eval.test_examples={args.eval_examples}", "eval.accuracy_examples=0",
        f"fedmezo.upload={args.upload}",
    ]


def play_flower(attack: list[str], extra: list[str], args, out: Path, name: str) -> dict:
    """The case as a `flwr run` on the simulation engine; the attack is made by the client app, not the server."""
    from zofed.config import load_config
    from zofed.runtime.flower.simulation import run_flower_sim

    config = load_config(args.config, overrides(args) + attack + extra)
    os.environ[FAULTS_ENV] = config.faults.model_dump_json()  # the hostile node's own orders, read by its workers
    config = load_config(args.config, overrides(args) + extra + [
        "runtime=flower-sim", f"name={name}", f"output_dir={out}", "flower.connect_timeout_s=1200"])
    started = time.perf_counter()
    summary = run_flower_sim(config, show_progress=False, client_app="benchmarks.hostile_client_app:app")
    rows = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    loss = summary["final_test_loss"]
    result = {"final_test_loss": loss, "rejected_replies": sum(len(row["rejected"]) for row in rows),
              "wall_s": round_s(time.perf_counter() - started)}
    print(f"  {name:20s} test loss {loss:.4f}  rejected {result['rejected_replies']}  ({result['wall_s']:.0f} s)",
          file=sys.stderr, flush=True)
    return result


def play(experiment, initial: dict, extra: list[str], args, out: Path, name: str) -> dict:
    """The config's rounds from the initial weights through the local runtime's `run_round`, then the test loss.

    One loaded model serves every case (loading SmolLM2 and evaluating the initial model nine times
    would cost more than the training): each case gets the experiment with its own config.
    """
    from zofed.algorithms import build_algorithm
    from zofed.config import load_config
    from zofed.eval import evaluate_loss
    from zofed.runtime.client import KeptStore
    from zofed.runtime.driver import run_round

    config = load_config(args.config, overrides(args) + extra)
    case = replace(experiment, config=config)
    case.view.load_(initial)
    algorithm = build_algorithm(config.algorithm, config.algorithm_settings)
    state, kept, rejected = algorithm.init(initial, config.seed), KeptStore(out / name), 0
    started = time.perf_counter()
    for round in range(1, config.rounds + 1):
        state, row = run_round(case, algorithm, state, round, kept)
        rejected += len(row["rejected"])
    loss = evaluate_loss(case.model, case.test_tokens, case.pad_token_id, config.eval.batch_size)
    result = {"final_test_loss": loss, "rejected_replies": rejected, "wall_s": round_s(time.perf_counter() - started)}
    print(f"  {name:20s} test loss {loss:.4f}  rejected {rejected}  ({result['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return result


def final_losses(document: dict) -> list[float]:
    """Every run's final test loss in a fixed order: clean, then per mode without and with the defence."""
    return [document["clean"]["final_test_loss"]] + [case[side]["final_test_loss"] for case in document["cases"]
                                                     for side in ("without_robust", "with_robust")]


def round_s(seconds: float) -> float:
    return float(f"{seconds:.1f}")


def relative_gap(loss: float, clean: float) -> float:
    return abs(loss - clean) / clean if math.isfinite(loss) else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--upload", choices=("weights", "seeds"), default="weights")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--eval-examples", type=int, default=24)
    parser.add_argument("--clip", type=float, default=50.0, help="--upload seeds: robust.clip_scalar")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runtime", choices=("local", "flower-sim"), default="local")
    parser.add_argument("--output", default="benchmarks/results/hostile_clients.json")
    args = parser.parse_args()
    if args.runtime == "flower-sim":  # the simulation's workers import the hostile client app from this checkout
        root = Path(__file__).resolve().parents[1]
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "src"), os.environ.get("PYTHONPATH", "")])

    import torch

    from zofed.machine import describe_machine

    torch.set_num_threads(args.threads)
    robust = [option.format(clip=args.clip) for option in ROBUST[args.upload]]
    modes = args.modes.split(",")
    started = time.perf_counter()
    from zofed.config import load_config
    from zofed.eval import evaluate_loss
    from zofed.runtime.experiment import build_experiment

    experiment = build_experiment(load_config(args.config, overrides(args)))
    initial = {name: tensor.clone() for name, tensor in experiment.view.state_dict().items()}
    initial_loss = evaluate_loss(experiment.model, experiment.test_tokens, experiment.pad_token_id,
                                 experiment.config.eval.batch_size)
    print(f"  initial test loss {initial_loss:.4f}", file=sys.stderr, flush=True)
    if args.runtime == "flower-sim":
        del experiment, initial  # every case loads its own, in the simulation's workers

    def play_case(attack: list[str], extra: list[str], name: str) -> dict:
        if args.runtime == "flower-sim":
            return play_flower(attack, extra, args, out, name)
        return play(experiment, initial, attack + extra, args, out, name)

    with tempfile.TemporaryDirectory(prefix="zofed-hostile-") as tmp:
        out = Path(tmp)
        clean = play_case([], [], "clean")
        cases = []
        for mode in modes:
            attack = [f"faults.hostile_clients=[{HOSTILE_CLIENT}]", f"faults.hostile_mode={mode}", "faults.hostile_scale=1000"]
            plain = play_case(attack, [], f"{mode}-mean")
            defended = play_case(attack, robust, f"{mode}-robust")
            cases.append({
                "hostile_mode": mode,
                "without_robust": plain | {"gap_to_clean": relative_gap(plain["final_test_loss"], clean["final_test_loss"])},
                "with_robust": defended | {"gap_to_clean": relative_gap(defended["final_test_loss"], clean["final_test_loss"])},
            })
    goal_met = all(case["with_robust"]["gap_to_clean"] <= TOLERANCE for case in cases)
    document = {
        "machine": describe_machine(),
        "setup": {
            "runtime": args.runtime, "config": args.config, "algorithm": "fedmezo", "upload": args.upload, "clients": 8, "sampled": 8,
            "hostile_client": HOSTILE_CLIENT, "hostile_scale": 1000, "rounds": args.rounds,
            "local_steps": args.local_steps, "batch_size": args.batch_size, "data_limit": args.limit,
            "eval_examples": args.eval_examples, "robust": robust, "tolerance": TOLERANCE,
        },
        "initial_test_loss": initial_loss,
        "clean": clean,
        "cases": cases,
        "goal_met": goal_met,
        "wall_s": round_s(time.perf_counter() - started),
    }
    print(f"\nclean: test loss {initial_loss:.4f} -> {clean['final_test_loss']:.4f}")
    print(f"{'mode':10s} {'mean: loss':>12s} {'gap':>8s} {'robust: loss':>13s} {'gap':>8s}")
    for case in cases:
        plain, defended = case["without_robust"], case["with_robust"]
        print(f"{case['hostile_mode']:10s} {plain['final_test_loss']:12.4f} {plain['gap_to_clean']:8.1%} "
              f"{defended['final_test_loss']:13.4f} {defended['gap_to_clean']:8.1%}")
    print(f"robust within {TOLERANCE:.0%} of clean in every mode: {goal_met}")
    output = Path(args.output)
    existing = json.loads(output.read_text()) if output.is_file() else {}
    if "by_runtime" not in existing:  # the file's first layout held the local runtime's results only
        existing = {"by_runtime": {"local": existing.get("by_upload", {})}}
    existing["by_runtime"].setdefault(args.runtime, {})[args.upload] = document
    local = existing["by_runtime"].get("local", {}).get(args.upload)
    if args.runtime != "local" and local and local["setup"] | {"runtime": args.runtime} == document["setup"]:
        gaps = [abs(a - b) for a, b in zip(final_losses(document), final_losses(local))]
        document["max_abs_difference_to_local"] = max(gaps)
        print(f"largest difference to the local runtime's final test losses: {max(gaps):.2e}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(existing, indent=2, allow_nan=True) + "\n")


if __name__ == "__main__":
    main()
