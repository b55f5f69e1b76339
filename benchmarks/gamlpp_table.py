"""The README table of benchmarks/gamlpp_heterogeneous.py's results: mean ± std over seeds, paired wins.

    .venv/bin/python benchmarks/gamlpp_table.py benchmarks/results/gamlpp_heterogeneous > table.md

Reads <dir>/<task>[-bytes]/<part>/results.json (any that exist). Runs with the same seed share
partitions, client sampling and evaluation examples (compare checks the hashes), so "wins" counts
the seeds where gamlpp's final test loss is below the method's on the same data.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METHODS = ("gamlpp", "fedmezo", "fedkseed", "decomfl")
ABLATIONS = (("no-personalisation", "mix=0"), ("no-adaptive-momentum", "server sgd, lr 1"))


def per_seed(document: dict, field: str) -> dict[str, dict[int, float]]:
    values: dict[str, dict[int, float]] = {}
    for run in document["runs"]:
        value = run["summary"].get(field)
        if value is not None:
            values.setdefault(run["algorithm"], {})[run["seed"]] = float(value)
    return values


def cell(values: dict[int, float] | None, fmt: str) -> str:
    if not values:
        return "–"
    numbers = list(values.values())
    spread = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
    return f"{fmt.format(statistics.mean(numbers))} ± {fmt.format(spread)}" if len(numbers) > 1 else fmt.format(numbers[0])


def wins(gamlpp: dict[int, float], other: dict[int, float]) -> str:
    seeds = sorted(set(gamlpp) & set(other))
    return f"{sum(gamlpp[s] < other[s] for s in seeds)}/{len(seeds)}"


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def table(root: Path) -> str:
    lines = ["| task | budget | metric | " + " | ".join(f"`{m}`" for m in METHODS) + " |",
             "|---|---|---|" + "---|" * len(METHODS)]
    verdicts = []
    for task in sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "main" / "results.json").is_file()):
        document = load(root / task / "main" / "results.json")
        budget = document["budget"]
        rounds = max(run["summary"]["rounds"] for run in document["runs"])
        label = f"{rounds} rounds" if budget is None else f"uplink ≤ {budget['value'] / 1e3:,.0f} kB"
        loss = per_seed(document, "final_test_loss")
        before = {seed: value for values in per_seed(document, "initial_test_loss").values() for seed, value in values.items()}
        accuracy = per_seed(document, "test_accuracy")
        uplink = per_seed(document, "bytes_up")
        ran = per_seed(document, "rounds_run")
        name = task.removesuffix("-bytes")
        lines.append(f"| {name} | {label} | test loss (before: {cell(before, '{:.4f}')}) | "
                     + " | ".join(cell(loss.get(m), "{:.4f}") for m in METHODS) + " |")
        if document["runs"][0]["summary"].get("test_accuracy") is not None:
            lines.append(f"| {name} | {label} | test accuracy | " + " | ".join(cell(accuracy.get(m), "{:.3f}") for m in METHODS) + " |")
        lines.append(f"| {name} | {label} | rounds run | " + " | ".join(cell(ran.get(m), "{:.1f}") for m in METHODS) + " |")
        lines.append(f"| {name} | {label} | uplink kB, whole run | " + " | ".join(cell({s: v / 1e3 for s, v in uplink[m].items()} if m in uplink else None, "{:,.1f}") for m in METHODS) + " |")
        if "gamlpp" in loss:
            lines.append(f"| {name} | {label} | seeds where gamlpp's loss is lower | – | "
                         + " | ".join(wins(loss["gamlpp"], loss[m]) if m in loss else "–" for m in METHODS[1:]) + " |")
            baselines = {m: statistics.mean(loss[m].values()) for m in METHODS[1:] if m in loss}
            mean = statistics.mean(loss["gamlpp"].values())
            best = min(baselines, key=baselines.get) if baselines else None
            if best:
                verdicts.append(f"- {name}, {label}: gamlpp {mean:.4f} vs best ZO baseline `{best}` {baselines[best]:.4f}: "
                                + ("**met**" if mean < baselines[best] else "**not met**"))
    lines += ["", "| task | `gamlpp` | " + " | ".join(f"{title} (`{part}`)" for part, title in ABLATIONS) + " |",
              "|---|---|" + "---|" * len(ABLATIONS)]
    for task in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.endswith("-bytes")):
        main_doc = load(root / task / "main" / "results.json")
        if main_doc is None:
            continue
        full = per_seed(main_doc, "final_test_loss").get("gamlpp")
        cells = []
        for part, _ in ABLATIONS:
            document = load(root / task / part / "results.json")
            ablated = per_seed(document, "final_test_loss").get("gamlpp") if document else None
            same = {seed: full[seed] for seed in ablated if seed in full} if full and ablated else None
            cells.append(cell(ablated, "{:.4f}") + (f" (full gamlpp on the same seeds: {cell(same, '{:.4f}')}, lower in "
                                                    f"{wins(full, ablated)})" if same else ""))
        lines.append(f"| {task} | {cell(full, '{:.4f}')} | " + " | ".join(cells) + " |")
    lines += ["", "Goal (gamlpp's mean final test loss below every ZO baseline's):", *verdicts]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/gamlpp_heterogeneous")))
