"""The run loop of every runtime: set up, then round after round (runtime/round.py), evaluate, checkpoint.

Each round is the one round body with a transport: in this process by default (every simulated
client shares one model in memory: it brings the shared model to the client's start model and
runs the algorithm's client step), or a Flower Grid (runtime/flower/server_app.py). Every message
goes through the codec so the byte ledger counts exactly what a real transport would carry.

Clients told to keep their model (replay downlink) keep their copy in a `KeptStore` under the run
directory, standing in for their own storage: the runtime holds no per-client state in memory, and
a round's work (messages, client steps, files touched, checkpoint size) grows with the sampled
clients, not the total. A resumed run finds the copies there and continues bit-identically.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import yaml

from zofed.algorithms import Algorithm, ServerState, build_algorithm
from zofed.algorithms.base import state_on
from zofed.atomic import write_atomic
from zofed.checkpoint import Checkpoint, save_checkpoint, save_weights
from zofed.config import RunConfig
from zofed.data import get_task
from zofed.eval import (GENERATION_METRICS, default_max_new_tokens, evaluate_loss, generate_answers, resolve_metrics,
                        score_generations)
from zofed.metrics import peak_of
from zofed.runtime import privacy
from zofed.runtime.client import KeptStore
from zofed.runtime.lr_probe import read_record
from zofed.runtime.prepare import prepared
from zofed.runtime.round import InProcessTransport, Transport, play_round
from zofed.runtime.experiment import Experiment, build_experiment, data_fingerprint, prepare_data
from zofed.rundir import open_run_dir, start_run_dir
from zofed.status import phase
from zofed.tracking import check_tracking, open_tracking


# (experiment, algorithm, state, round, kept models) -> (new state, the round's metrics row)
RoundFn = Callable[[Experiment, Algorithm, ServerState, int, KeptStore], tuple[ServerState, dict]]
# Sees each round's row once it is recorded (checkpointed); a true return stops the run there.
RoundHook = Callable[[dict], bool]


class RunPaths:
    def __init__(self, config: RunConfig) -> None:
        self.root = config.run_dir
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / "metrics.jsonl"
        self.summary = self.root / "summary.json"
        self.clients = self.root / "clients"  # the simulated clients' kept models


# metrics.jsonl holds one row per event, in order: the before-training evaluation ("before", round 0),
# each round ("round"), the after-training evaluation ("final", round = the rounds run). Every row has
# `time`, the wall clock (Unix seconds) when it was recorded.
EVENT_BEFORE, EVENT_ROUND, EVENT_FINAL = "before", "round", "final"


def read_metrics(run_dir: Path) -> list[dict]:
    """Every row of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def round_rows(run_dir: Path) -> list[dict]:
    """The round rows of a run's metrics.jsonl, without the before-training and final evaluations
    (a row without `event` comes from a run written before the field existed: a round)."""
    return [row for row in read_metrics(run_dir) if row.get("event", EVENT_ROUND) == EVENT_ROUND]


def evaluation_row(event: str, round: int, evaluation: dict) -> dict:
    """metrics.jsonl's row of the before-training (`round` 0) or final evaluation (`round` the rounds run)."""
    return {"event": event, "round": round, **evaluation}


@dataclass(frozen=True)
class Budget:
    """Stop a run once a cumulative cost reaches `value`: its rounds, uplink bytes, forward passes or wall time.

    Checked before each round, so the round that crosses the budget completes (and a resumed run
    stops at the same round). `config.rounds` stays the upper limit.
    """

    kind: Literal["rounds", "bytes", "forward_passes", "wall_s"]
    value: float

    def spent(self, history: list[dict]) -> float:
        if self.kind == "rounds":
            return float(len(history))
        key = {"bytes": "bytes_up", "forward_passes": "forward_passes", "wall_s": "seconds"}[self.kind]
        return float(sum(row[key] for row in history))


def run_experiment(
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    stop_after_round: int | None = None,
    budget: Budget | None = None,
    round_fn: RoundFn | None = None,
    on_round: RoundHook | None = None,
) -> dict | None:
    """Run (or resume) a config; returns the summary, or None when stopped early by `stop_after_round`
    or by `on_round` (`zofed tune` prunes a trial on its validation loss this way; the stopped run
    keeps its rounds and checkpoint, like a killed one).

    `round_fn` carries a round's messages to the clients and back: `run_round` in this process
    by default, or another runtime's transport (Flower) around the same steps.
    """
    round_fn = round_fn or run_round
    session_started = time.perf_counter()
    paths = RunPaths(config)
    check_tracking(config.tracking)  # before the run directory is touched: a missing W&B leaves nothing behind
    resolve_metrics(get_task(config.task), config.eval.metrics)  # likewise: a metric the task cannot score
    checkpoint = open_run_dir(paths.root, resume=resume, overwrite=overwrite)
    with phase("reading and splitting the data", show_progress):
        data = prepare_data(config)
    with phase(f"loading the model ({config.model}) and tokenising", show_progress):
        experiment = build_experiment(config, data)
    # measured before round 1 where the config asks (lr: auto, ZorBA's memory profile); config.yaml records it
    probe_files: dict[str, bytes] = {}  # lr: auto's record and plot, written once the directory is this run's
    config = prepared(config, resume=checkpoint is not None, experiment=experiment, files=probe_files)
    experiment = replace(experiment, config=config)
    algorithm = build_algorithm(config.algorithm, config.algorithm_settings)
    data_hashes = data_fingerprint(experiment)
    # held until the run ends, however it ends: a second process on the same directory refuses
    with start_run_dir(paths.root, config.to_dict(), checkpoint, data_hashes):
        for name, content in probe_files.items():
            write_atomic(paths.root / name, content)
        kept = KeptStore(paths.clients)
        if checkpoint is not None:
            # the server's state lives on the model's device; a checkpoint loads on the host
            state, first_round, extra = state_on(checkpoint.state, experiment.device), checkpoint.round + 1, checkpoint.extra
            experiment.view.load_(state.weights)
        else:
            state, first_round = algorithm.init(experiment.view.state_dict(experiment.device), config.seed), 1
            extra = {"history": [], "initial": evaluate_all(experiment, "before training", show_progress),
                     "elapsed_s": 0.0, "best_eval_loss": None,
                     "data_hashes": data_hashes}  # compared on --resume
        _write_run_files(paths, config, extra)
        clock = _Clock(extra["elapsed_s"], session_started)

        with open_tracking(config, paths.root, first_round, show_progress, extra["initial"], extra["history"]) as tracking:
            if checkpoint is None:
                tracking.start(config.to_dict())
            for round in range(first_round, config.rounds + 1):
                if budget is not None and budget.spent(extra["history"]) >= budget.value:
                    break
                state, row = round_fn(experiment, algorithm, state, round, kept)
                if config.privacy.dp == "step":  # each client's ε, from the steps counted so far (kept in the checkpoint)
                    counts, row = privacy.account_round(config, experiment, extra.get("privacy_counts", {}), row)
                    extra = {**extra, "privacy_counts": counts}
                row = {"event": EVENT_ROUND, **row, "time": time.time()}  # wall clock (Unix seconds) at the round's end
                extra = _record_round(paths, state, row, extra, clock.elapsed())
                tracking.round(row)
                if stop_after_round is not None and round >= stop_after_round:
                    return None
                if on_round is not None and on_round(row):
                    return None
            tracking.end_rounds()
            final = evaluate_all(experiment, "after training", show_progress)
            last_round = len(extra["history"]) and extra["history"][-1]["round"]
            _append_row(paths, evaluation_row(EVENT_FINAL, last_round, final))
            tracking.final(last_round, final, config.to_dict())

        save_weights(paths.root / "final.safetensors", dict(state.weights))
        summary = _summary(config, extra, final, clock.elapsed()) | {
            "budget": None if budget is None else {"kind": budget.kind, "value": budget.value},
            "data_hashes": extra["data_hashes"],
            "lr_probe": read_record(paths.root),  # lr: auto's range test: its pick, forward passes and bytes
        }
        if config.privacy.dp == "step":
            summary["privacy"] = privacy.summary(config, experiment, extra.get("privacy_counts", {}))
        from zofed.report import plot_run  # matplotlib: not for a ClientApp process, which imports this module per message

        plot_run(extra["history"], extra["initial"]["eval_loss"], paths.root / "report.png", f"{config.name}: {config.algorithm}")
        _write_json(paths.summary, summary)
        return summary


def run_round(
    experiment: Experiment, algorithm: Algorithm, state: ServerState, round: int, kept: KeptStore,
    transport: Transport | None = None,
) -> tuple[ServerState, dict]:
    """One round through `transport`: by default every client in this process, `kept` updated for the
    sampled clients as each client's own storage would be."""
    config = experiment.config
    transport = transport or InProcessTransport(experiment, algorithm, kept, config.faults, config.seed)
    state, row = play_round(experiment, algorithm, state, round, transport, config.robust)
    experiment.view.load_(state.weights)
    return state, with_evaluation(experiment, row)


def with_evaluation(experiment: Experiment, row: dict) -> dict:
    """The round body's row with what only the LLM experiment knows: validation loss, layer-forwards.
    `experiment` holds the new global model."""
    config, round = experiment.config, row["round"]
    evaluate = round % config.eval.every == 0 or round == config.rounds
    layers = experiment.loaded.num_layers
    return {
        **row,
        "eval_loss": _validation_loss(experiment) if evaluate else None,
        # methods that run part of the model report layer_forwards; a full forward is num_layers of them
        # (screened counts: finite, bounded by the local steps the server assigned, so int() cannot fail)
        "layer_forwards": sum(int(client.get("layer_forwards", client.get("forward_passes", 0) * layers))
                              for client in row["per_client"] if "rejected" not in client),
    }


def evaluate_all(experiment: Experiment, when: str = "", live: bool = True) -> dict:
    """Validation loss and every metric of `eval.metrics` on the test examples (`test_<metric>`), and the
    seconds it took (the progress ETA counts the final evaluation with it). `when` names it in the status line.

    Generation metrics score the first `eval.accuracy_examples` test examples; with none (or none with an
    answer, for answer metrics) they are None."""
    config, task = experiment.config, experiment.data.task
    metrics = resolve_metrics(task, config.eval.metrics)
    started = time.perf_counter()
    with phase(f"evaluating {when}".strip() + " (validation and test loss)", live):
        result = {"eval_loss": _validation_loss(experiment)}
        if "loss" in metrics:
            result["test_loss"] = evaluate_loss(experiment.model, experiment.test_tokens, experiment.pad_token_id,
                                                config.eval.batch_size)
    generated = [name for name in metrics if name in GENERATION_METRICS]
    examples = experiment.accuracy_examples
    scores: dict[str, float] = {}
    if generated and examples:
        with phase(f"generating answers {when}".strip() + f" for {', '.join(generated)} ({len(examples)} examples)",
                   live) as progress:
            texts = generate_answers(experiment.model, experiment.loaded.tokenizer, examples, experiment.max_length,
                                     config.eval.max_new_tokens or default_max_new_tokens(metrics),
                                     config.eval.batch_size, config.data.system_prompt, progress)
        scores = score_generations(generated, examples, texts, task.extract_answer)
    for name in generated:
        value = scores.get(name)
        result[f"test_{name}"] = value if value is not None and math.isfinite(value) else None
    return result | {"seconds": time.perf_counter() - started, "time": time.time()}


def _validation_loss(experiment: Experiment) -> float:
    return evaluate_loss(
        experiment.model, experiment.val_tokens, experiment.pad_token_id, experiment.config.eval.batch_size
    )


def _record_round(paths: RunPaths, state: ServerState, row: dict, extra: dict, elapsed_s: float) -> dict:
    """Append the round's metrics, keep the best weights, and checkpoint; returns the new bookkeeping."""
    best = extra["best_eval_loss"]
    if row["eval_loss"] is not None and math.isfinite(row["eval_loss"]) and (best is None or row["eval_loss"] < best):
        best = row["eval_loss"]
        save_weights(paths.root / "best.safetensors", dict(state.weights))
    _append_row(paths, row)
    extra = {
        **extra,
        "history": extra["history"] + [row],
        "best_eval_loss": best,
        "elapsed_s": elapsed_s,
    }
    save_checkpoint(paths.checkpoints, Checkpoint(round=row["round"], state=state, extra=extra))
    return extra


def _summary(config: RunConfig, extra: dict, final: dict, wall_s: float) -> dict:
    history, initial = extra["history"], extra["initial"]
    return {
        "name": config.name,
        "algorithm": config.algorithm,
        "model": config.model,
        "task": config.task,
        "rounds": config.rounds,
        "rounds_run": len(history),
        "clients": config.clients,
        "metrics": list(resolve_metrics(get_task(config.task), config.eval.metrics)),
        "initial_eval_loss": initial["eval_loss"],
        "final_eval_loss": final["eval_loss"],
        "best_eval_loss": extra["best_eval_loss"],
        # every evaluated metric before and after training: initial_test_<metric>, final_test_<metric>
        **{f"{when}_{key}": evaluation.get(key) for key in _metric_keys(initial, final)
           for when, evaluation in (("initial", initial), ("final", final))},
        # the answer accuracy under the name earlier summaries used (exact_match or gsm8k_answer)
        "initial_test_accuracy": _accuracy(initial),
        "test_accuracy": _accuracy(final),
        "bytes_up": sum(row["bytes_up"] for row in history),
        "bytes_down": sum(row["bytes_down"] for row in history),
        "forward_passes": sum(row["forward_passes"] for row in history),
        "skipped_steps": sum(row["skipped_steps"] for row in history),
        "peak_rss_mb": max((row["peak_rss_mb"] for row in history), default=None),
        "peak_device_mb": peak_of(row.get("peak_device_mb") for row in history),
        # the fields above (and in metrics.jsonl's per-client rows) that are the clients' own word
        "client_reported": sorted({key for row in history for key in row.get("client_reported", ())}),
        "wall_s": wall_s,
    }


def _metric_keys(initial: dict, final: dict) -> list[str]:
    """The evaluations' `test_<metric>` keys, in the order evaluated (a run before this field had test_accuracy)."""
    return [key for key in dict.fromkeys([*initial, *final]) if key.startswith("test_") and key != "test_accuracy"]


def _accuracy(evaluation: dict) -> float | None:
    found = [evaluation.get(key) for key in ("test_accuracy", "test_exact_match", "test_gsm8k_answer")]
    return next((value for value in found if value is not None), None)


def _write_run_files(paths: RunPaths, config: RunConfig, extra: dict) -> None:
    paths.summary.unlink(missing_ok=True)
    write_atomic(paths.root / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    # On resume the metrics file is rebuilt from the checkpoint, dropping any round (and final row) written after it.
    rows = [evaluation_row(EVENT_BEFORE, 0, extra["initial"]), *extra["history"]]
    write_atomic(paths.metrics, "".join(json.dumps(row) + "\n" for row in rows))


def _append_row(paths: RunPaths, row: dict) -> None:
    with open(paths.metrics, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def _write_json(path, document: dict) -> None:
    write_atomic(path, json.dumps(document, indent=2, allow_nan=True) + "\n")


class _Clock:
    """Run time accumulated across resumed sessions."""

    def __init__(self, before_s: float, started: float) -> None:
        self._before_s, self._started = before_s, started

    def elapsed(self) -> float:
        return self._before_s + time.perf_counter() - self._started
