"""`zofed compare`: several algorithms on identical data, sampling, seeds and budgets, side by side.

Each (algorithm, seed) is an ordinary local run under `<out>/runs/<algorithm>-seed<seed>/`, so
anything a run writes is there too. Runs share everything but the algorithm: the same config,
so the same partitions, client sampling and evaluation examples for a given seed — recorded as
hashes in results.json and checked equal across algorithms. A finished run (its summary.json
exists) is never run again; a half-finished one resumes from its checkpoint. So re-running the
same command after an interruption, or with more seeds or algorithms, runs only what is missing.

Runs are in-process (`runtime: local`); a config or override asking for another runtime is
refused rather than silently run locally.

Budgets: by default every run gets the config's rounds. `--budget bytes=N` (total uplink bytes
of the run), `forward_passes=N` or `wall_s=N` stop each run before the first round that would
start with the budget spent (the crossing round completes; `rounds` stays an upper limit).
Bytes and forward passes are deterministic; wall time is not.

`--tune` first tunes each algorithm's lr on its own (`zofed tune`, the same number of trials and
the same lr range for each, under the same budget) in `<out>/tune/<algorithm>/`, then compares
the runs at each algorithm's best lr: the protocol ZO papers use, as one lr suits no two methods.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from zofed.algorithms import ALGORITHMS  # noqa: E402
from zofed.atomic import atomic_path, write_atomic  # noqa: E402
from zofed.config import RunConfig, load_config, override_section, overrides_read_by  # noqa: E402
from zofed.errors import ZofedError  # noqa: E402
from zofed.machine import describe_machine  # noqa: E402
from zofed.runtime.experiment import json_digest  # noqa: E402
from zofed.rundir import refuse_changed_settings  # noqa: E402
from zofed.runtime.driver import Budget, round_rows, run_experiment  # noqa: E402

BUDGET_KINDS = ("rounds", "bytes", "forward_passes", "wall_s")
# Summary fields averaged over seeds per algorithm, in the order the table shows them after the metrics
# (each evaluated metric's before -> after, from initial_test_<metric> and final_test_<metric>).
TABLE_FIELDS = (
    ("bytes_up_per_client_round", "uplink B / client / round", "{:,.0f}"),
    ("bytes_down_per_client_round", "downlink B / client / round", "{:,.0f}"),
    ("peak_rss_mb", "peak client RSS (MB)", "{:,.0f}"),
    ("forward_passes", "forward passes", "{:,.0f}"),
    ("rounds_run", "rounds", "{:.0f}"),
    ("wall_s", "wall time (s)", "{:,.0f}"),
)
METRIC_FORMATS = {"loss": "{:.4f}"}  # the others are shares in [0, 1]: "{:.3f}"
LEGACY_FIELDS = ("test_accuracy",)  # averaged too: earlier benchmark scripts read it from the aggregate


DEFAULT_TUNE_TRIALS = 8
DEFAULT_LR_RANGE = "1e-5:1e-2"


@dataclass(frozen=True)
class TuneSpec:
    """`--tune`: each algorithm's lr searched over [low, high] (log scale) in `trials` trials."""

    trials: int
    lr_range: str


def parse_tune(tune: bool, trials: int | None, lr_range: str | None) -> TuneSpec | None:
    if not tune:
        if trials is not None or lr_range is not None:
            raise ZofedError("--trials and --lr-range belong to --tune; add --tune or drop them")
        return None
    trials = DEFAULT_TUNE_TRIALS if trials is None else trials
    if trials < 1:
        raise ZofedError(f"--trials {trials} must be at least 1")
    lr_range = DEFAULT_LR_RANGE if lr_range is None else lr_range
    bounds = lr_range.split(":")
    try:
        low, high = (float(bound) for bound in bounds)
    except ValueError:
        low = high = math.nan
    if not 0 < low < high < math.inf:
        raise ZofedError(f"--lr-range '{lr_range[:40]}' must be LOW:HIGH with 0 < LOW < HIGH, e.g. {DEFAULT_LR_RANGE}")
    return TuneSpec(trials, lr_range)


@dataclass(frozen=True)
class CompareRun:
    algorithm: str
    seed: int
    config: RunConfig


def parse_budget(text: str | None) -> Budget | None:
    if text is None:
        return None
    kind, _, value = text.partition("=")
    try:
        amount = float(value)
    except ValueError:
        amount = math.nan
    if kind not in BUDGET_KINDS or not amount > 0:
        raise ZofedError(f"bad budget '{text}'; use KIND=AMOUNT with KIND one of {', '.join(BUDGET_KINDS)}, e.g. bytes=2e6")
    return Budget(kind, amount)  # type: ignore[arg-type]


def plan_runs(config_path: str | Path, overrides: Sequence[str], algorithms: Sequence[str], seeds: int,
              out: Path, own: dict[str, list[str]] | None = None) -> list[CompareRun]:
    """Every run's validated config, built before anything runs so bad input fails with nothing written.

    `own`: overrides for one algorithm's runs only (its tuned lr).
    """
    if not algorithms:
        raise ZofedError("no algorithms to compare; pass --algorithms a,b (see `zofed list`)")
    if len(set(algorithms)) != len(algorithms):
        raise ZofedError(f"--algorithms lists one twice: {','.join(algorithms)}")
    if seeds < 1:
        raise ZofedError(f"--seeds {seeds} must be at least 1")
    # An override of a method's section applies to that method's runs; one naming a method not compared is refused.
    unread = sorted({override_section(o) for o in overrides} & set(ALGORITHMS) - set(algorithms))
    if unread:
        raise ZofedError(f"an override sets {unread[0]}'s settings, but --algorithms does not compare {unread[0]}; "
                         f"add it to --algorithms or drop the override")
    base = load_config(config_path, overrides_read_by(None, overrides))
    if base.runtime != "local":
        # Identical partitions, sampling and evaluation are guaranteed (and hash-checked) for the
        # in-process runtime only; silently running locally would mislabel the results.
        raise ZofedError(f"zofed compare runs every algorithm in-process and cannot honour runtime={base.runtime}; "
                         "drop the runtime setting, or use `zofed run` per algorithm")
    base_seed = base.seed
    runs = []
    for algorithm in algorithms:
        for offset in range(seeds):
            seed = base_seed + offset
            config = load_config(config_path, [*overrides_read_by(algorithm, overrides), *(own or {}).get(algorithm, ()),
                                               f"algorithm={algorithm}", f"seed={seed}",
                                               f"name={algorithm}-seed{seed}", f"output_dir={out / 'runs'}"])
            runs.append(CompareRun(algorithm, seed, config))
    return runs


def run_compare(
    config_path: str | Path,
    overrides: Sequence[str],
    algorithms: Sequence[str],
    seeds: int = 1,
    budget: Budget | None = None,
    out: Path | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    tune: TuneSpec | None = None,
) -> dict:
    name = load_config(config_path, overrides_read_by(None, overrides)).name
    out = Path(out) if out is not None else Path("compare") / name
    runs = plan_runs(config_path, overrides, algorithms, seeds, out)
    tuned = {}
    if tune is not None:
        tuned = tune_each(config_path, overrides, algorithms, tune, out, budget, show_progress, log)
        runs = plan_runs(config_path, overrides, algorithms, seeds, out,
                         own={algorithm: [f"{algorithm}.lr={entry['lr']!r}"] for algorithm, entry in tuned.items()})
    results = []
    for index, run in enumerate(runs, start=1):
        label = f"[{index}/{len(runs)}] {run.algorithm} seed {run.seed}"
        summary_path = run.config.run_dir / "summary.json"
        if summary_path.is_file():
            _refuse_reuse_with_other_settings(run)
            log(f"{label}: done before, reusing {run.config.run_dir}")
        else:
            resume = run.config.run_dir.exists()
            log(f"{label}: {'resuming' if resume else 'running'} in {run.config.run_dir}")
            # a run killed before its first checkpoint has nothing to resume: it starts over in its own directory
            run_experiment(run.config, resume=resume, overwrite=resume, show_progress=show_progress, budget=budget)
        results.append(collect(run))
    document = build_results(name, config_path, overrides, budget, results) | ({"tuned": tuned} if tuned else {})
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps(document, indent=2, allow_nan=True) + "\n")
    write_atomic(out / "results.md", results_table(document))
    plot_compare(document, out)
    log(f"results in {out}/ (results.json, results.md, loss_vs_round.png, loss_vs_bytes.png, "
        "loss_vs_forward_passes.png, memory.png)")
    return document


def tune_each(config_path, overrides: Sequence[str], algorithms: Sequence[str], tune: TuneSpec, out: Path,
              budget: Budget | None, show_progress: bool, log: Callable[[str], None]) -> dict[str, dict]:
    """Each algorithm's best lr from its own study (`<out>/tune/<algorithm>/`), all studies checked before any runs."""
    from zofed.tune import parse_params, run_study

    studies = {algorithm: ([*overrides_read_by(algorithm, overrides), f"algorithm={algorithm}"],
                           [f"{algorithm}.lr={tune.lr_range}:log"]) for algorithm in algorithms}
    for algorithm, (own, params) in studies.items():
        if f"{algorithm}.lr" in {override.partition("=")[0] for override in own}:
            raise ZofedError(f"--tune sets each method's lr by tuning it; drop the override {algorithm}.lr=...")
        try:
            parse_params(config_path, own, params)
        except ZofedError as error:
            raise ZofedError(f"--tune: {error}") from None
    tuned = {}
    for index, (algorithm, (own, params)) in enumerate(studies.items(), start=1):
        study_dir = out / "tune" / algorithm
        log(f"[tune {index}/{len(studies)}] {algorithm}: {tune.trials} trials of {params[0]} in {study_dir}")
        document = run_study(config_path, own, params, tune.trials, out=study_dir, show_progress=show_progress,
                             budget=budget, log=log)
        best = document["best"]
        if best is None:
            raise ZofedError(f"--tune: no trial of {algorithm} reached a finite validation loss with lr in {tune.lr_range} "
                             f"(see {study_dir}/results.md); try a lower --lr-range")
        tuned[algorithm] = {"lr": best["params"][f"{algorithm}.lr"], "validation_loss": best["value"],
                            "trials": tune.trials, "lr_range": tune.lr_range, "study": str(study_dir)}
        log(f"[tune {index}/{len(studies)}] {algorithm}: best lr {tuned[algorithm]['lr']:.4g} "
            f"(validation loss {best['value']:.5f})")
    return tuned


def _refuse_reuse_with_other_settings(run: CompareRun) -> None:
    """A finished run is reused only if it ran with this comparison's settings (a study given more trials may
    have found another lr since)."""
    try:
        refuse_changed_settings(run.config.run_dir, run.config.to_dict())
    except ZofedError:
        raise ZofedError(f"the finished run {run.config.run_dir} ran with other settings than this comparison gives it "
                         "(a changed override, or a new tuned lr); delete that directory to run it again, or choose "
                         "another --out") from None


def collect(run: CompareRun) -> dict:
    summary = json.loads((run.config.run_dir / "summary.json").read_text())
    history = round_rows(run.config.run_dir)
    if summary.get("budget") is not None and history and summary["rounds_run"] != len(history):
        raise ZofedError(f"run {run.config.run_dir} is inconsistent (summary vs metrics.jsonl); delete it and run again")
    contacts = sum(len(row["clients"]) for row in history) or 1
    curve, totals = [{"round": 0, "eval_loss": summary["initial_eval_loss"], "bytes": 0, "forward_passes": 0,
                      "wall_s": 0.0}], {"bytes": 0, "forward_passes": 0, "wall_s": 0.0}
    for row in history:
        totals = {"bytes": totals["bytes"] + row["bytes_up"] + row["bytes_down"],
                  "forward_passes": totals["forward_passes"] + row["forward_passes"],
                  "wall_s": totals["wall_s"] + row["seconds"]}
        curve.append({"round": row["round"], "eval_loss": row["eval_loss"], "train_loss": row["train_loss"], **totals})
    sampling = [row["clients"] for row in history]
    return {
        "algorithm": run.algorithm,
        "seed": run.seed,
        "run_dir": str(run.config.run_dir),
        "summary": summary | {
            "bytes_up_per_client_round": summary["bytes_up"] / contacts,
            "bytes_down_per_client_round": summary["bytes_down"] / contacts,
        },
        "curve": curve,
        "hashes": summary["data_hashes"] | {"sampling": json_digest(sampling)},
        "sampling": sampling,  # clients per round; a budget may stop runs at different rounds
    }


def build_results(name: str, config_path, overrides, budget: Budget | None, results: list[dict]) -> dict:
    check_same_conditions(results)
    algorithms = list(dict.fromkeys(r["algorithm"] for r in results))
    metrics = compared_metrics(results)
    fields = [f"{when}_test_{name}" for name in metrics for when in ("initial", "final")]
    fields += [field for field, _, _ in TABLE_FIELDS] + [field for field in LEGACY_FIELDS if field not in fields]
    aggregate = {}
    for algorithm in algorithms:
        runs = [r for r in results if r["algorithm"] == algorithm]
        aggregate[algorithm] = {field: _mean_std([r["summary"].get(field) for r in runs]) for field in fields}
    return {
        "name": name,
        "config": str(config_path),
        "overrides": list(overrides),
        "budget": None if budget is None else {"kind": budget.kind, "value": budget.value},
        "machine": describe_machine(),
        "algorithms": algorithms,
        "seeds": sorted({r["seed"] for r in results}),
        "metrics": metrics,
        "runs": results,
        "aggregate": aggregate,
    }


def compared_metrics(results: list[dict]) -> list[str]:
    """The metrics the runs evaluated before and after training, in the runs' order (summary keys final_test_<metric>)."""
    keys = dict.fromkeys(key for r in results for key in r["summary"] if key.startswith("final_test_"))
    return [key.removeprefix("final_test_") for key in keys]


def check_same_conditions(results: list[dict]) -> None:
    """Same data for every run, and the same sampling for every algorithm at a given seed.

    Under a budget, runs stop at different rounds, so their sampling must agree on the rounds
    they share: the shortest run's clients per round are a prefix of every other run's.
    """
    for seed in {r["seed"] for r in results}:
        runs = [r for r in results if r["seed"] == seed]
        for key in ("partition", "train", "val", "test", "accuracy"):
            if len({r["hashes"][key] for r in runs}) != 1:
                _differ(seed, key)
        shortest = min((r["sampling"] for r in runs), key=len)
        if any(r["sampling"][: len(shortest)] != shortest for r in runs):
            _differ(seed, "sampling")


def _differ(seed: int, key: str) -> None:
    raise ZofedError(
        f"runs with seed {seed} differ in their {key} data although they share a config; "
        f"delete the compare directory's runs/ and run again"
    )


def results_table(document: dict) -> str:
    seeds = document["seeds"]
    budget = document["budget"]
    metrics = document.get("metrics") or compared_metrics(document["runs"])
    columns = [(f"test {name}, before → after", (f"initial_test_{name}", f"final_test_{name}"),
                METRIC_FORMATS.get(name, "{:.3f}")) for name in metrics]
    columns += [(title, (field,), fmt) for field, title, fmt in TABLE_FIELDS]
    lines = [
        f"# {document['name']}: {', '.join(document['algorithms'])}",
        "",
        f"Config `{document['config']}` {' '.join(document['overrides'])}; seeds {seeds} (mean ± std over seeds); "
        + ("equal rounds." if budget is None else f"budget {budget['kind']} = {budget['value']:g} per run."),
        "",
        "| algorithm | " + " | ".join(title for title, _, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    if document.get("tuned"):
        lines[4:4] = ["lr tuned per algorithm before comparing (`zofed tune`, TPE with median pruning on the validation "
                      "loss): " + "; ".join(f"`{algorithm}` {entry['lr']:.3g} ({entry['trials']} trials in {entry['lr_range']})"
                                            for algorithm, entry in document["tuned"].items()) + ".", ""]
    for algorithm in document["algorithms"]:
        stats = document["aggregate"][algorithm]
        cells = [" → ".join(_cell(stats.get(field), fmt) for field in fields) for _, fields, fmt in columns]
        lines.append(f"| `{algorithm}` | " + " | ".join(cells) + " |")
    machine = document["machine"]
    lines += ["", f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, torch {machine.get('torch', '?')}.", ""]
    return "\n".join(lines)


def _cell(stats: dict | None, fmt: str) -> str:
    if stats is None:
        return "–"
    if stats["n"] > 1:
        return f"{fmt.format(stats['mean'])} ± {fmt.format(stats['std'])}"
    return fmt.format(stats["mean"])


def plot_compare(document: dict, out: Path) -> None:
    for x_key, x_label, filename in (
        ("round", "round", "loss_vs_round.png"),
        ("bytes", "cumulative bytes up + down (MB)", "loss_vs_bytes.png"),
        ("forward_passes", "cumulative forward passes", "loss_vs_forward_passes.png"),
    ):
        figure, axis = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
        for algorithm in document["algorithms"]:
            x, y, spread = _mean_curve([r["curve"] for r in document["runs"] if r["algorithm"] == algorithm], x_key)
            if x_key == "bytes":
                x = [value / 1e6 for value in x]
            axis.plot(x, y, marker="o", markersize=3, label=algorithm)
            if any(spread):
                axis.fill_between(x, [a - b for a, b in zip(y, spread)], [a + b for a, b in zip(y, spread)], alpha=0.15)
        if x_key == "bytes":
            axis.set_xscale("symlog", linthresh=1e-3)
        axis.set(xlabel=x_label, ylabel="validation loss", title=f"{document['name']}: loss vs {x_key.replace('_', ' ')}")
        axis.grid(alpha=0.3)
        axis.legend()
        _save(figure, out / filename)

    figure, axis = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    algorithms = document["algorithms"]
    stats = [document["aggregate"][a]["peak_rss_mb"] or {"mean": 0.0, "std": 0.0} for a in algorithms]
    axis.bar(algorithms, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], color="tab:blue", alpha=0.8)
    axis.set(ylabel="peak client RSS (MB)", title=f"{document['name']}: client memory")
    axis.grid(alpha=0.3, axis="y")
    _save(figure, out / "memory.png")


def _mean_curve(curves: list[list[dict]], x_key: str) -> tuple[list[float], list[float], list[float]]:
    """Mean over seeds at each evaluated round (present in every seed's run), with the std."""
    evaluated = [{p["round"]: p for p in curve if p["eval_loss"] is not None} for curve in curves]
    rounds = sorted(set.intersection(*(set(e) for e in evaluated)))
    x = [statistics.mean(e[r][x_key] for e in evaluated) for r in rounds]
    y = [statistics.mean(e[r]["eval_loss"] for e in evaluated) for r in rounds]
    spread = [statistics.pstdev([e[r]["eval_loss"] for e in evaluated]) for r in rounds]
    return x, y, spread


def _mean_std(values: list) -> dict | None:
    numbers = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not numbers:
        return None
    return {"mean": statistics.mean(numbers), "std": statistics.stdev(numbers) if len(numbers) > 1 else 0.0,
            "n": len(numbers)}


def _save(figure, path: Path) -> None:
    try:
        with atomic_path(path) as staging:
            figure.savefig(staging, dpi=110)
    finally:
        plt.close(figure)
