"""GAM-LPP vs the ZO baselines under strong heterogeneity (Dirichlet α = 0.1), plus ablations.

One `zofed compare` (same partitions, client sampling, seeds and evaluation examples for every
algorithm, hashes checked) of gamlpp, fedmezo, fedkseed and decomfl on the config's task split
by Dirichlet(α) over its labels, then — with `--ablations` — gamlpp twice more, each without one
part: `mix=0` (isotropic perturbation, adaptive momentum kept) and `server_optimizer: sgd lr 1`
(personalised perturbation kept, plain averaging). Every method gets the same client lr and μ.
`--budget bytes=N` stops every run at the same uplink bytes instead of the same rounds.

    .venv/bin/python benchmarks/gamlpp_heterogeneous.py [--seeds 3] [--rounds 12] [--budget bytes=2e6]
        [--ablations] [--smoke] [--algorithms a,b] [--reuse DIR] [override ...]
    .venv/bin/python benchmarks/gamlpp_heterogeneous.py --reproduce benchmarks/reproduce/gamlpp.yaml --task builtin

`--reproduce FILE --task NAME` takes config, overrides, rounds, lr, mu and server lr from that
file's task entry (the committed CPU-scale settings); flags given on the command line win.
`--smoke` is a 2-round tiny-llama run (random weights: it checks the plumbing, not the claim).
`--reuse DIR` copies finished runs from an earlier output directory with the same settings
instead of running them again — under `--budget`, only runs the budget would not have cut
(every round but the last started below it), so the copy is the run the budget would make.
Results: <out>/<part>/results.{json,md} from compare, and <out>/summary.json with every part's
mean final test loss per algorithm and the machine description.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from zofed.compare import parse_budget, run_compare
from zofed.runtime.driver import Budget, round_rows

import results_header
from repo_paths import from_repo_root

BASELINES = ("gamlpp", "fedmezo", "fedkseed", "decomfl")
ABLATIONS = {
    "no-personalisation": ["gamlpp.mix=0.0"],
    "no-adaptive-momentum": ["gamlpp.server_optimizer.name=sgd", "gamlpp.server_optimizer.lr=1.0"],
}
SMOKE = ["model=tiny-llama", "rounds=2", "clients=4", "clients_per_round=2", "data.limit=160", "data.val_size=16",
         "data.test_size=16", "local.local_steps=4", "eval.val_examples=16", "eval.test_examples=16",
         "eval.accuracy_examples=2", "eval.max_new_tokens=2", "trainable.r=4", "trainable.alpha=8"]


def method_overrides(lr: float, mu: float, server_lr: float) -> list[str]:
    shared = [f"{name}.{key}={value}" for name in BASELINES for key, value in (("lr", lr), ("mu", mu))]
    return shared + ["gamlpp.server_optimizer.name=adam", f"gamlpp.server_optimizer.lr={server_lr}"]


def reusable(run_dir: Path, budget: Budget | None) -> bool:
    """A finished run that the budget (if any) would not have stopped early."""
    if not (run_dir / "summary.json").is_file():
        return False
    if budget is None:
        return True
    history = round_rows(run_dir)
    return budget.spent(history[:-1]) < budget.value


def reuse_runs(source: Path, target: Path, algorithms: list[str], budget: Budget | None) -> None:
    for algorithm in algorithms:
        for run_dir in sorted((source / "runs").glob(f"{algorithm}-seed*")):
            destination = target / "runs" / run_dir.name
            if not destination.exists() and reusable(run_dir, budget):
                shutil.copytree(run_dir, destination)
                print(f"reusing {run_dir} (the budget would not have cut it)", flush=True)


DEFAULTS = {"config": "configs/quickstart.yaml", "rounds": 12, "lr": 6e-4, "mu": 1e-2, "server_lr": 1e-2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reproduce", default=None, help="YAML of per-task settings, e.g. benchmarks/reproduce/gamlpp.yaml")
    parser.add_argument("--task", default=None, help="the entry of --reproduce to use")
    parser.add_argument("--config", default=None, help=f"default {DEFAULTS['config']}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=None, help=f"default {DEFAULTS['rounds']}")
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration over the task's labels")
    parser.add_argument("--lr", type=float, default=None, help=f"client lr of every method (default {DEFAULTS['lr']})")
    parser.add_argument("--mu", type=float, default=None, help=f"default {DEFAULTS['mu']}")
    parser.add_argument("--server-lr", type=float, default=None, help=f"gamlpp's server Adam lr (default {DEFAULTS['server_lr']})")
    parser.add_argument("--budget", default=None, help="e.g. bytes=2e6: equal uplink bytes instead of equal rounds")
    parser.add_argument("--algorithms", default=",".join(BASELINES), help="the main part's algorithms")
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--parts", default=None, help=f"run only these parts, e.g. main,{','.join(ABLATIONS)}")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--reuse", default=None, help="earlier output directory whose finished runs may be copied")
    parser.add_argument("--out", default="benchmarks/results/gamlpp_heterogeneous")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    preset = dict(DEFAULTS)
    preset_overrides: list[str] = []
    if args.reproduce:
        entries = yaml.safe_load(Path(args.reproduce).read_text())
        if args.task not in entries:
            parser.error(f"--task must name an entry of {args.reproduce}: {', '.join(entries)}")
        entry = dict(entries[args.task])
        preset_overrides = [str(item) for item in entry.pop("overrides", [])]
        preset |= entry
    for key in DEFAULTS:
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    # the config and the run directories as results.json and summary.json store them: from the repository root
    config, out, *reuse = from_repo_root(args.config, args.out, *([args.reuse] if args.reuse else []))
    common = [f"rounds={args.rounds}", "partition.method=dirichlet", f"partition.alpha={args.alpha}",
              *method_overrides(float(args.lr), float(args.mu), float(args.server_lr)), *preset_overrides,
              *(SMOKE if args.smoke else []), *args.overrides]
    budget = parse_budget(args.budget)
    parts = {"main": (args.algorithms.split(","), [])}
    if args.ablations or args.parts:
        parts |= {name: (["gamlpp"], extra) for name, extra in ABLATIONS.items()}
    if args.parts:
        unknown = set(args.parts.split(",")) - set(parts)
        if unknown:
            parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; use main,{','.join(ABLATIONS)}")
        parts = {name: parts[name] for name in args.parts.split(",")}
    summary = {}
    header = results_header.begin()
    for part, (algorithms, extra) in parts.items():
        if args.reuse:
            reuse_runs(reuse[0] / part, out / part, algorithms, budget)
        document = run_compare(config, [*common, f"name=gamlpp-{part}", *extra], algorithms, seeds=args.seeds,
                               budget=budget, out=out / part, show_progress=False)
        results_header.stamp(out / part / "results.json", header)  # commit, load, each run's resolved config
        summary[part] = {algorithm: {field: document["aggregate"][algorithm][field]
                                     for field in ("final_test_loss", "test_accuracy", "bytes_up_per_client_round")}
                         for algorithm in algorithms}
        print(f"{part}: {json.dumps(summary[part], default=str)}", flush=True)
    if args.parts:  # a partial invocation adds its parts to an earlier summary
        earlier = out / "summary.json"
        summary = (json.loads(earlier.read_text())["parts"] if earlier.is_file() else {}) | summary
    results_header.write(out / "summary.json", results_header.end(header, {}, {
        "config": str(config), "overrides": common, "budget": args.budget, "seeds": args.seeds, "parts": summary,
        "resolved_configs": "in each part's results.json"}))


if __name__ == "__main__":
    main()
