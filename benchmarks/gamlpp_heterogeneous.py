"""GAM-LPP vs the ZO baselines under strong heterogeneity (Dirichlet α = 0.1), plus ablations.

One `zofed compare` (same partitions, client sampling, seeds and evaluation examples for every
algorithm, hashes checked) of gamlpp, fedmezo, fedkseed and decomfl on the config's task split
by Dirichlet(α) over its labels, then — with `--ablations` — gamlpp twice more, each without one
part: `mix=0` (isotropic perturbation, adaptive momentum kept) and `server_optimizer: sgd lr 1`
(personalised perturbation kept, plain averaging). Every method gets the same client lr and μ.
`--budget bytes=N` stops every run at the same uplink bytes instead of the same rounds.

    .venv/bin/python benchmarks/gamlpp_heterogeneous.py [--seeds 3] [--rounds 12] [--budget bytes=2e6]
        [--ablations] [--smoke] [override ...]

`--smoke` is a 2-round tiny-llama run (random weights: it checks the plumbing, not the claim).
Results: <out>/<part>/results.{json,md} from compare, and <out>/summary.json with every part's
mean final test loss per algorithm.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zofed.compare import parse_budget, run_compare

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration over the task's labels")
    parser.add_argument("--lr", type=float, default=6e-4, help="client lr of every method")
    parser.add_argument("--mu", type=float, default=1e-2)
    parser.add_argument("--server-lr", type=float, default=1e-2, help="gamlpp's server Adam lr")
    parser.add_argument("--budget", default=None, help="e.g. bytes=2e6: equal uplink bytes instead of equal rounds")
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/gamlpp_heterogeneous")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    common = [f"rounds={args.rounds}", "partition.method=dirichlet", f"partition.alpha={args.alpha}",
              *method_overrides(args.lr, args.mu, args.server_lr), *(SMOKE if args.smoke else []), *args.overrides]
    budget = parse_budget(args.budget)
    parts = {"main": (list(BASELINES), [])}
    if args.ablations:
        parts |= {name: (["gamlpp"], extra) for name, extra in ABLATIONS.items()}
    summary = {}
    for part, (algorithms, extra) in parts.items():
        document = run_compare(args.config, [*common, f"name=gamlpp-{part}", *extra], algorithms, seeds=args.seeds,
                               budget=budget, out=out / part, show_progress=False)
        summary[part] = {algorithm: {field: document["aggregate"][algorithm][field]
                                     for field in ("final_test_loss", "test_accuracy", "bytes_up_per_client_round")}
                         for algorithm in algorithms}
        print(f"{part}: {json.dumps(summary[part], default=str)}", flush=True)
    (out / "summary.json").write_text(json.dumps({"config": args.config, "overrides": common, "budget": args.budget,
                                                  "parts": summary}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
