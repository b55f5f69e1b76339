"""`zofed tune`: search a config's numeric settings with Optuna, then write the best config.

A study samples the `--param KEY=LOW:HIGH[:log]` ranges with Optuna's TPE sampler and minimises
the final validation loss. Each trial is an ordinary local run under `<out>/trials/trial-NNN/`
(its config.yaml, metrics.jsonl, summary.json, plots), so every trial's record is readable on its
own. After each evaluation the trial reports its validation loss for that round, and Optuna's
median pruner stops a trial whose loss is worse than the median of earlier trials at the same
round (the stopped run keeps its rounds and checkpoint, like a killed one).

The study lives in one file, `<out>/study.journal` (Optuna's JournalFileBackend), so rerunning
the same command continues it: finished trials (complete or pruned) are kept, a trial that was
running when the process died is marked failed and re-run with the same values, and new trials
run until `--trials` of them have finished. A study continues only with the settings it started
with (config, overrides, ranges, budget); `--trials` may grow.

Outputs in `<out>/`: results.json, results.md (also printed as a table), trials.png, and
best.yaml: the best trial's config, with its own name and the config's output_dir, for `zofed run`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402
from optuna.storages import JournalStorage  # noqa: E402
from optuna.storages.journal import JournalFileBackend  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from zofed.atomic import atomic_path, write_atomic  # noqa: E402
from zofed.config import RunConfig, excerpt, load_config, resolve_file_paths  # noqa: E402
from zofed.errors import ZofedError  # noqa: E402
from zofed.rundir import RunLock  # noqa: E402
from zofed.runtime.driver import Budget, run_experiment  # noqa: E402

PARAM_SYNTAX = "KEY=LOW:HIGH[:log]"
STUDY_FILE = "study.journal"
STUDY_NAME = "zofed-tune"
TRIALS_DIR = "trials"
BEST_FILE = "best.yaml"
OBJECTIVE = "final validation loss (lower is better)"
# Keys a study may not search: they name the run, not its training.
NOT_TUNABLE = frozenset({"name", "output_dir", "algorithm", "runtime"})


@dataclass(frozen=True)
class Param:
    """One searched setting: an override key and its range (ints for an integer setting)."""

    key: str
    low: int | float
    high: int | float
    log: bool

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int)

    def suggest(self, trial: optuna.Trial) -> int | float:
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def as_dict(self) -> dict:
        return {"key": self.key, "low": self.low, "high": self.high, "log": self.log,
                "type": "int" if self.integer else "float"}


def parse_params(config_path: str | Path, overrides: Sequence[str], texts: Sequence[str]) -> list[Param]:
    """Every `--param`, checked against the config's schema before anything runs.

    Each bound is tried as an override of the config, so an unknown key, a key of a section the
    run's algorithm does not read, or a bound the setting refuses fails here with the config's own
    message; the setting's type (int or float) decides the kind of range.
    """
    if not texts:
        raise ZofedError("no --param given; search at least one setting, e.g. --param fedmezo.lr=1e-5:1e-2:log")
    overridden = {override.partition("=")[0] for override in overrides}
    params: list[Param] = []
    for text in texts:
        key, low_text, high_text, log = _split_param(text)
        if key in overridden:
            raise ZofedError(f"--param {excerpt(key)} is also set by the override {excerpt(key)}=...; drop one of them")
        if key in {param.key for param in params}:
            raise ZofedError(f"--param {excerpt(key)} is given twice; give each key once")
        if key in NOT_TUNABLE:
            raise ZofedError(f"--param {key}: {key} names the run, it is not a training setting; search numeric settings "
                             "such as fedmezo.lr or local.local_steps")
        low, high = (_bound(config_path, overrides, key, value, text) for value in (low_text, high_text))
        if isinstance(low, int) != isinstance(high, int):
            raise ZofedError(f"--param {excerpt(text)}: LOW and HIGH must both be integers or both decimals")
        if not low < high:
            raise ZofedError(f"--param {excerpt(text)}: LOW must be below HIGH")
        if log and low <= 0:
            raise ZofedError(f"--param {excerpt(text)}: a log range needs LOW > 0")
        params.append(Param(key, low, high, log))
    return params


def _split_param(text: str) -> tuple[str, str, str, bool]:
    key, sep, spec = text.partition("=")
    parts = spec.split(":")
    if not sep or not key or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ZofedError(f"--param '{excerpt(text)}' is not of the form {PARAM_SYNTAX}, e.g. fedmezo.lr=1e-5:1e-2:log")
    for part in parts[:2]:
        try:
            number = float(part)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ZofedError(f"--param '{excerpt(text)}': '{excerpt(part)}' is not a finite number; use {PARAM_SYNTAX}")
    return key, parts[0], parts[1], len(parts) == 3


def _bound(config_path, overrides: Sequence[str], key: str, value: str, text: str) -> int | float:
    """`value` as the setting `key` takes it (validated by the config), or one line saying why not."""
    try:
        config = load_config(config_path, [*overrides, f"{key}={value}"])
    except ZofedError as error:
        raise ZofedError(f"--param {excerpt(text)}: {error}") from None
    setting = config.to_dict()
    for part in key.split("."):
        setting = setting.get(part) if isinstance(setting, dict) else None
    if isinstance(setting, bool) or not isinstance(setting, (int, float)):
        raise ZofedError(f"--param {excerpt(text)}: {excerpt(key)} is not a numeric setting; search numbers such as "
                         "fedmezo.lr or local.local_steps")
    return setting


def run_study(
    config_path: str | Path,
    overrides: Sequence[str],
    param_texts: Sequence[str],
    trials: int,
    out: Path | None = None,
    show_progress: bool = True,
    budget: Budget | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> dict:
    """Run (or continue) a study until `trials` trials have finished; returns results.json's document."""
    overrides = list(overrides)
    if trials < 1:
        raise ZofedError(f"--trials {trials} must be at least 1")
    params = parse_params(config_path, overrides, param_texts)
    base = load_config(config_path, overrides)
    if base.runtime != "local":
        # pruning stops a trial between rounds, which the in-process run loop offers
        raise ZofedError(f"zofed tune runs its trials in-process and cannot honour runtime={base.runtime}; "
                         "drop the runtime setting")
    out = Path(out) if out is not None else Path("tune") / base.name
    _check_study_dir(out)
    spec = _spec(base, params, budget)
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = RunLock(out)  # one process per study: a RUNNING trial found under the lock was interrupted
    except ZofedError:
        raise ZofedError(f"study directory '{out}' is in use by another zofed tune; wait for it to end or choose "
                         "another --out") from None
    with lock:
        study = _open_study(out, spec, pruner)
        _requeue_interrupted(study, log)
        finished = len(_finished(study))
        if finished >= trials:
            log(f"study in {out}: {finished} trials finished before, none to add (raise --trials for more)")
        while finished < trials:
            _run_trial(study, config_path, overrides, params, out, f"{finished + 1}/{trials}", show_progress, budget, log)
            finished = len(_finished(study))
        document = study_results(study, base, config_path, overrides, params, trials, out)
        write_atomic(out / "results.json", json.dumps(document, indent=2, allow_nan=True) + "\n")
        write_atomic(out / "results.md", results_markdown(document))
        plot_trials(document, out / "trials.png")
        _write_best(document, config_path, overrides, base, out)
    return document


def _check_study_dir(out: Path) -> None:
    """A study goes into a new directory or continues its own: it never writes among someone else's files."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ZofedError(f"study directory '{out}' is not a plain directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / STUDY_FILE).is_file():
        raise ZofedError(f"'{out}' is not empty and holds no {STUDY_FILE}, so it is not a zofed tune study; "
                         "choose another --out")


def _spec(base: RunConfig, params: list[Param], budget: Budget | None) -> dict:
    """What makes a study the same study on a rerun (not --trials, which may grow)."""
    config = base.to_dict()
    config.pop("name")
    config.pop("output_dir")
    spec = {"config": config, "params": [param.as_dict() for param in params],
            "budget": None if budget is None else {"kind": budget.kind, "value": budget.value}}
    return json.loads(json.dumps(spec))  # as the journal stores it, so a rerun compares equal


def _open_study(out: Path, spec: dict, pruner: optuna.pruners.BasePruner | None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # zofed says what each trial did, once
    storage = JournalStorage(JournalFileBackend(str(out / STUDY_FILE)))
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="minimize", load_if_exists=True,
                                pruner=pruner or optuna.pruners.MedianPruner())
    saved = study.user_attrs.get("zofed")
    if saved is None:
        study.set_user_attr("zofed", spec)
    elif saved != spec:
        changed = _changed_keys(saved, spec)
        raise ZofedError(f"study directory '{out}' holds a study with other settings ({', '.join(changed[:6])}); "
                         "rerun with the config, overrides and --param it started with, or choose another --out")
    # Seeded from the run's seed and the trials so far: reproducible, and a continued study does not
    # sample its first trials' values again.
    study.sampler = optuna.samplers.TPESampler(seed=(base_seed(spec) + len(study.trials)) % 2**32)
    return study


def base_seed(spec: dict) -> int:
    return int(spec["config"].get("seed", 0))


def _changed_keys(before: dict, after: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def _finished(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _requeue_interrupted(study: optuna.Study, log: Callable[[str], None]) -> None:
    """Trials left RUNNING by a killed process: failed (with a note), and run again with the same values."""
    storage = study._storage  # the public API cannot end another process's trial
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            log(f"trial {trial.number} was interrupted; marked failed, running its values again")


def _run_trial(study: optuna.Study, config_path, overrides: list[str], params: list[Param], out: Path, label: str,
               show_progress: bool, budget: Budget | None, log: Callable[[str], None]) -> None:
    trial = study.ask()
    values = {param.key: param.suggest(trial) for param in params}
    config = load_config(config_path, [*overrides, *(f"{key}={value!r}" for key, value in values.items()),
                                       f"name=trial-{trial.number:03d}", f"output_dir={out / TRIALS_DIR}"])
    trial.set_user_attr("run_dir", str(config.run_dir))
    shown = " ".join(f"{key}={_number(value)}" for key, value in values.items())
    log(f"[trial {trial.number}, {label}] {shown}: running in {config.run_dir}")

    def on_round(row: dict) -> bool:
        """Report each evaluated round's validation loss; stop the run when the pruner says so."""
        if row["eval_loss"] is None:
            return False
        loss = row["eval_loss"] if math.isfinite(row["eval_loss"]) else math.inf  # diverged: the worst loss
        trial.report(loss, row["round"])
        return trial.should_prune()

    try:
        summary = run_experiment(config, show_progress=show_progress, budget=budget, on_round=on_round)
    except Exception as error:  # a run that cannot run ends the study; Ctrl-C or a kill leaves the trial to rerun
        trial.set_user_attr("error", excerpt(str(error), 300))
        study.tell(trial, state=TrialState.FAIL)
        raise
    if summary is None:
        study.tell(trial, state=TrialState.PRUNED)
        rounds = max(study.trials[trial.number].intermediate_values, default=0)
        log(f"[trial {trial.number}] pruned after round {rounds}: its validation loss is above the median of earlier trials")
        return
    loss = summary["final_eval_loss"]
    study.tell(trial, loss if math.isfinite(loss) else math.inf)
    best = study.best_trial
    log(f"[trial {trial.number}] validation loss {loss:.5f} (best: trial {best.number}, {best.value:.5f})")


def _number(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def study_results(study: optuna.Study, base: RunConfig, config_path, overrides: list[str], params: list[Param],
                  trials: int, out: Path) -> dict:
    rows = []
    for trial in study.trials:
        rows.append({
            "number": trial.number,
            "state": trial.state.name.lower(),
            "params": trial.params,
            "value": trial.value,
            # the validation loss of each evaluated round (JSON keys are strings)
            "intermediate": {str(step): value for step, value in sorted(trial.intermediate_values.items())},
            "run_dir": trial.user_attrs.get("run_dir"),
            **({"retry_of": trial.user_attrs["retry_of"]} if "retry_of" in trial.user_attrs else {}),
            **({"interrupted": True} if trial.user_attrs.get("interrupted") else {}),
            **({"error": trial.user_attrs["error"]} if "error" in trial.user_attrs else {}),
        })
    complete = [row for row in rows if row["state"] == "complete" and math.isfinite(row["value"])]
    best = min(complete, key=lambda row: row["value"], default=None)
    return {
        "name": base.name,
        "config": str(config_path),
        "overrides": overrides,
        "params": [param.as_dict() for param in params],
        "trials_requested": trials,
        "objective": OBJECTIVE,
        "sampler": "optuna TPESampler",
        "pruner": type(study.pruner).__name__,
        "study": str(out / STUDY_FILE),
        "best": None if best is None else {"number": best["number"], "value": best["value"], "params": best["params"],
                                           "config": str(out / BEST_FILE), "run_dir": best["run_dir"]},
        "trials": rows,
    }


def _state_text(row: dict) -> str:
    if row["state"] == "pruned":
        return f"pruned (round {max(map(int, row['intermediate']), default=0)})"
    if row["state"] == "fail":
        return "interrupted" if row.get("interrupted") else "failed"
    return row["state"]


def table_rows(document: dict) -> tuple[list[str], list[list[str]]]:
    """The results table's header and rows (trial order), shared by the console and results.md."""
    keys = [param["key"] for param in document["params"]]
    header = ["trial", "state", *keys, "validation loss", "run"]
    best = (document["best"] or {}).get("number")
    body = []
    for row in document["trials"]:
        value = row["value"]
        if value is None and row["intermediate"]:  # pruned: its last reported loss
            value = row["intermediate"][max(row["intermediate"], key=int)]
        loss = "–" if value is None else f"{value:.5f}"
        body.append([f"{row['number']}{' (best)' if row['number'] == best else ''}", _state_text(row),
                     *(_number(row["params"][key]) if key in row["params"] else "–" for key in keys), loss,
                     row["run_dir"] or "–"])
    return header, body


def results_markdown(document: dict) -> str:
    header, body = table_rows(document)
    ranges = ", ".join(f"{p['key']} in [{_number(p['low'])}, {_number(p['high'])}]{' (log)' if p['log'] else ''}"
                       for p in document["params"])
    best = document["best"]
    lines = [
        f"# {document['name']}: tuning {', '.join(p['key'] for p in document['params'])}",
        "",
        f"Config `{document['config']}` {' '.join(document['overrides'])}; {ranges}; objective: {document['objective']}; "
        f"{document['sampler']}, {document['pruner']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cells) + " |" for cells in body),
        "",
        (f"Best: trial {best['number']}, validation loss {best['value']:.5f}; config `{best['config']}`."
         if best else "No trial completed with a finite validation loss: no best config."),
        "",
    ]
    return "\n".join(lines)


def print_table(document: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    header, body = table_rows(document)
    header, body = header[:-1], [cells[:-1] for cells in body]  # run directories: in results.md, too wide here
    table = Table(title=f"{document['name']}: {len(document['trials'])} trials, {document['objective']}")
    for name in header:
        table.add_column(name, justify="left" if name == "state" else "right", min_width=len(name))
    best = (document["best"] or {}).get("number")
    for row, cells in zip(document["trials"], body):
        table.add_row(*cells, style="bold green" if row["number"] == best else None)
    console = Console()
    # piped, rich assumes 80 columns and would cut the parameter names; a file has room
    (console if console.is_terminal else Console(width=max(80, sum(map(len, header)) + 40))).print(table)


def plot_trials(document: dict, path: Path) -> None:
    """Left: each trial's validation loss per round (pruned dashed, best bold); then the final loss against each parameter."""
    params = document["params"]
    figure, axes = plt.subplots(1, 1 + len(params), figsize=(5.2 * (1 + len(params)), 4), constrained_layout=True,
                                squeeze=False)
    curves, best = axes[0][0], (document["best"] or {}).get("number")
    for row in document["trials"]:
        points = sorted((int(step), value) for step, value in row["intermediate"].items() if math.isfinite(value))
        if not points:
            continue
        is_best = row["number"] == best
        curves.plot(*zip(*points), marker="o", markersize=3, linestyle="--" if row["state"] == "pruned" else "-",
                    linewidth=2.5 if is_best else 1, alpha=1 if is_best else 0.6,
                    label=f"trial {row['number']} (best)" if is_best else None)
    curves.set(xlabel="round", ylabel="validation loss", title="trials (dashed: pruned)")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    if best is not None:
        curves.legend()
    for axis, param in zip(axes[0][1:], params):
        for state, marker, color in (("complete", "o", "tab:blue"), ("pruned", "x", "tab:gray")):
            points = [(row["params"][param["key"]], _last_loss(row)) for row in document["trials"]
                      if row["state"] == state and param["key"] in row["params"] and math.isfinite(_last_loss(row))]
            if points:
                axis.scatter(*zip(*points), marker=marker, color=color, label=state)
        if best is not None:
            axis.scatter([document["best"]["params"][param["key"]]], [document["best"]["value"]], s=120,
                         facecolors="none", edgecolors="tab:red", label="best")
        if param["log"]:
            axis.set_xscale("log")
        elif param["type"] == "int":
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set(xlabel=param["key"], ylabel="validation loss (pruned: last)", title=f"loss vs {param['key']}")
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    for axis in axes[0]:
        axis.grid(alpha=0.3)
        axis.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))  # small changes as plain numbers
    figure.suptitle(f"{document['name']}: {len(document['trials'])} trials")
    try:
        with atomic_path(path) as staging:
            figure.savefig(staging, dpi=110)
    finally:
        plt.close(figure)


def _last_loss(row: dict) -> float:
    if row["value"] is not None:
        return row["value"]
    if row["intermediate"]:
        return row["intermediate"][max(row["intermediate"], key=int)]
    return math.nan


def _write_best(document: dict, config_path, overrides: list[str], base: RunConfig, out: Path) -> None:
    """best.yaml: the best trial's resolved config, named `<name>-tuned`, writing where the config's runs go."""
    best = document["best"]
    if best is None:
        (out / BEST_FILE).unlink(missing_ok=True)
        return
    config = load_config(config_path, [*overrides, *(f"{key}={value!r}" for key, value in best["params"].items()),
                                       f"name={base.name}-tuned"])
    # Paths as the command line meant them (relative to the current directory), since the file lives elsewhere.
    data = resolve_file_paths(config.to_dict(), Path.cwd())
    data["output_dir"] = os.path.abspath(config.output_dir)
    shown = ", ".join(f"{key}={_number(value)}" for key, value in best["params"].items())
    header = (f"# zofed tune: the best of {len(document['trials'])} trials (trial {best['number']}: {shown}, "
              f"validation loss {best['value']:.5f}); run it with `zofed run {out / BEST_FILE}`\n")
    write_atomic(out / BEST_FILE, header + yaml.safe_dump(data, sort_keys=False))
