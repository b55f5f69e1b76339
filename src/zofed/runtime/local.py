"""The in-process round loop: every simulated client shares one model in memory.

Each round: sample clients; for each, encode the server's message, decode it as the client
would, bring the shared model to the client's start model (the downlink's weights, or the
client's kept copy moved by replayed records) and run the algorithm's client step; encode the
reply and decode it as the server would; aggregate; evaluate; checkpoint. Every message goes
through the codec so the byte ledger counts exactly what a real transport would carry.

Clients told to keep their model (replay downlink) keep their copy in a `KeptStore` under the run
directory, standing in for their own storage: the runtime holds no per-client state in memory, and
a round's work (messages, client steps, files touched, checkpoint size) grows with the sampled
clients, not the total. A resumed run finds the copies there and continues bit-identically.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import yaml

from zofed.algorithms import Algorithm, ClientEnv, ServerState, build_algorithm
from zofed.checkpoint import Checkpoint, load_latest_checkpoint, save_checkpoint, save_weights
from zofed.config import RunConfig
from zofed.errors import ZofedError
from zofed.eval import evaluate_loss, exact_match_accuracy
from zofed.llm.split import ModelSplit
from zofed.metrics import ByteLedger, peak_rss_mb, reset_peak_rss
from zofed.runtime.client import KeptModel, KeptStore, receive_model_
from zofed.runtime.codec import decode, encode, encode_with_sizes, sizes_of
from zofed.runtime.faults import corrupt, reply_lost
from zofed.runtime.memory_profile import with_memory_profile
from zofed.runtime.screening import screen_replies
from zofed.runtime.experiment import Experiment, build_experiment, data_fingerprint, prepare_data
from zofed.tracking import check_tracking, open_tracking

DEFAULT_MAX_NEW_TOKENS = 16


# (experiment, algorithm, state, round, kept models) -> (new state, the round's metrics row)
RoundFn = Callable[[Experiment, Algorithm, ServerState, int, KeptStore], tuple[ServerState, dict]]


class RunPaths:
    def __init__(self, config: RunConfig) -> None:
        self.root = config.run_dir
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / "metrics.jsonl"
        self.summary = self.root / "summary.json"
        self.clients = self.root / "clients"  # the simulated clients' kept models


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


def run_local(
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    stop_after_round: int | None = None,
    budget: Budget | None = None,
    play_round: RoundFn | None = None,
) -> dict | None:
    """Run (or resume) a config; returns the summary, or None when stopped early by `stop_after_round`.

    `play_round` carries a round's messages to the clients and back: `run_round` in this process
    by default, or another runtime's transport (Flower) around the same steps.
    """
    play_round = play_round or run_round
    session_started = time.perf_counter()
    paths = RunPaths(config)
    _check_run_dir(paths, resume, overwrite)
    check_tracking(config.tracking)
    config = with_memory_profile(config, resume)
    data = prepare_data(config)
    experiment = build_experiment(config, data)
    algorithm = build_algorithm(config.algorithm, config.algorithm_settings)
    checkpoint = load_latest_checkpoint(paths.checkpoints) if resume else None
    kept = KeptStore(paths.clients)
    if checkpoint is not None:
        state, first_round, extra = checkpoint.state, checkpoint.round + 1, checkpoint.extra
        for client, model in checkpoint.kept.items():  # a checkpoint from before the store held the copies
            kept.save(client, model)
        experiment.view.load_(state.weights)
    else:
        if paths.root.exists():
            shutil.rmtree(paths.root)
        state, first_round = algorithm.init(experiment.view.state_dict(), config.seed), 1
        extra = {"history": [], "initial": evaluate_all(experiment), "elapsed_s": 0.0, "best_eval_loss": None}
    _write_run_files(paths, config, extra["history"])
    clock = _Clock(extra["elapsed_s"], session_started)

    with open_tracking(config, paths.root, first_round, show_progress) as tracking:
        for round in range(first_round, config.rounds + 1):
            if budget is not None and budget.spent(extra["history"]) >= budget.value:
                break
            state, row = play_round(experiment, algorithm, state, round, kept)
            extra = _record_round(paths, state, row, extra, clock.elapsed())
            tracking.round(row)
            if stop_after_round is not None and round >= stop_after_round:
                return None

    final = evaluate_all(experiment)
    save_weights(paths.root / "final.safetensors", dict(state.weights))
    summary = _summary(config, extra, final, clock.elapsed()) | {
        "budget": None if budget is None else {"kind": budget.kind, "value": budget.value},
        "data_hashes": data_fingerprint(experiment),
    }
    from zofed.report import plot_run  # matplotlib: not for a ClientApp process, which imports this module per message

    plot_run(extra["history"], extra["initial"]["eval_loss"], paths.root / "report.png", f"{config.name}: {config.algorithm}")
    _write_json(paths.summary, summary)
    return summary


def run_round(
    experiment: Experiment, algorithm: Algorithm, state: ServerState, round: int, kept: KeptStore
) -> tuple[ServerState, dict]:
    """One round; `kept` is updated for the sampled clients, as each client's own storage would be."""
    round_started = time.perf_counter()
    clients = experiment.sample_clients(round)
    messages = algorithm.configure(state, round, clients)
    ledger = ByteLedger()
    replies, per_client = [], []
    faults = experiment.config.faults
    dropped = []
    for client, message in zip(clients, messages):
        downlink, down_sizes = encode_with_sizes(message)
        ledger.record(client, "down", down_sizes)
        uplink, client_row, kept_model = client_round(experiment, algorithm, client, downlink, kept.load(client, round - 1))
        kept.save(client, kept_model)
        if reply_lost(faults, experiment.config.seed, round, client):
            dropped.append(client)
            per_client.append({**client_row, "bytes_up": 0, "bytes_down": down_sizes.total, "dropped": True})
            continue
        if client in faults.hostile_clients:
            uplink = encode(corrupt(decode(uplink), faults, dict(state.weights), experiment.client_seed(round, client)))
        up_sizes = sizes_of(uplink)
        ledger.record(client, "up", up_sizes)
        replies.append((client, decode(uplink)))
        per_client.append({**client_row, "bytes_up": up_sizes.total, "bytes_down": down_sizes.total})
    screened = screen_replies(replies, state.weights, experiment.config.robust)
    state = algorithm.aggregate(state, round, screened.replies)
    experiment.view.load_(state.weights)
    row = round_row(experiment, round, clients, per_client, ledger, round_started)
    return state, row | {"dropped": dropped, "rejected": {str(c): why for c, why in screened.rejected.items()}}


def client_round(
    experiment: Experiment, algorithm: Algorithm, client: int, downlink: bytes, kept: KeptModel | None
) -> tuple[bytes, dict, KeptModel | None]:
    """A client's whole round, from the server's bytes to its reply's bytes; every runtime's clients run this.

    Returns the encoded reply, the client's metrics row and the model it keeps (None: keep nothing).
    """
    reset_peak_rss()
    client_started = time.perf_counter()
    message = decode(downlink)
    lr = message.config.get("lr")  # the rate this client was told: FedMeZO's differ per client
    env = client_env(experiment, message.round, client)
    message, kept = receive_model_(message, env.tensors, env.names, kept)
    reply = algorithm.train(message, env)
    del message
    seconds = time.perf_counter() - client_started
    client_peak_rss_mb = peak_rss_mb()
    experiment.model.eval()
    row = {
        "client": client,
        **{key: float(value) for key, value in reply.metrics.items()},
        "seconds": seconds,
        "peak_rss_mb": client_peak_rss_mb,
        "lr": float(lr) if isinstance(lr, (int, float)) else None,
    }
    return encode(reply), row, kept


def round_row(
    experiment: Experiment, round: int, clients: list[int], per_client: list[dict], ledger: ByteLedger, started: float
) -> dict:
    """The round's metrics line, after aggregation (`experiment` holds the new global model)."""
    config = experiment.config
    evaluate = round % config.eval.every == 0 or round == config.rounds
    losses = [row["train_loss"] for row in per_client if math.isfinite(row["train_loss"])]
    return {
        "round": round,
        "clients": clients,
        "train_loss": sum(losses) / len(losses) if losses else math.nan,
        "eval_loss": _validation_loss(experiment) if evaluate else None,
        "bytes_up": ledger.total("up"),
        "bytes_down": ledger.total("down"),
        "bytes_up_by_kind": ledger.by_kind("up"),
        "bytes_down_by_kind": ledger.by_kind("down"),
        "forward_passes": sum(int(row["forward_passes"]) for row in per_client),
        # methods that run part of the model report layer_forwards; a full forward is num_layers of them
        "layer_forwards": sum(
            int(row.get("layer_forwards", row["forward_passes"] * experiment.loaded.num_layers)) for row in per_client
        ),
        "skipped_steps": sum(int(row["skipped_steps"]) for row in per_client),
        "peak_rss_mb": max((row["peak_rss_mb"] for row in per_client), default=None),
        "seconds": time.perf_counter() - started,
        "per_client": per_client,
    }


def client_env(experiment: Experiment, round: int, client: int) -> ClientEnv:
    model = experiment.model

    def loss(batch) -> float:
        with torch.inference_mode():
            return float(model(**batch, use_cache=False).loss)

    def loss_for_backward(batch) -> torch.Tensor:
        model.train()
        return model(**batch, use_cache=False).loss

    return ClientEnv(
        client_id=client,
        seed=experiment.client_seed(round, client),
        names=experiment.view.names,
        tensors=experiment.view.tensors,
        parameters=experiment.parameters,
        batches=experiment.client_batches(round, client),
        loss=loss,
        loss_for_backward=loss_for_backward,
        num_examples=len(experiment.data.client_indices[client]),
        split=ModelSplit(model, experiment.view.tensors),
    )


def evaluate_all(experiment: Experiment) -> dict:
    """Validation and test loss plus exact-match accuracy (for tasks with short answers)."""
    config, task = experiment.config, experiment.data.task
    accuracy = None
    if task.short_answers and experiment.accuracy_examples:
        accuracy = exact_match_accuracy(
            experiment.model,
            experiment.loaded.tokenizer,
            experiment.accuracy_examples,
            task.extract_answer,
            experiment.max_length,
            config.eval.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            config.eval.batch_size,
            config.data.system_prompt,
        )
    return {
        "eval_loss": _validation_loss(experiment),
        "test_loss": evaluate_loss(experiment.model, experiment.test_tokens, experiment.pad_token_id, config.eval.batch_size),
        "test_accuracy": accuracy,
    }


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
    with open(paths.metrics, "a") as handle:
        handle.write(json.dumps(row) + "\n")
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
        "initial_eval_loss": initial["eval_loss"],
        "final_eval_loss": final["eval_loss"],
        "best_eval_loss": extra["best_eval_loss"],
        "initial_test_loss": initial["test_loss"],
        "final_test_loss": final["test_loss"],
        "initial_test_accuracy": initial["test_accuracy"],
        "test_accuracy": final["test_accuracy"],
        "bytes_up": sum(row["bytes_up"] for row in history),
        "bytes_down": sum(row["bytes_down"] for row in history),
        "forward_passes": sum(row["forward_passes"] for row in history),
        "skipped_steps": sum(row["skipped_steps"] for row in history),
        "peak_rss_mb": max((row["peak_rss_mb"] for row in history), default=None),
        "wall_s": wall_s,
    }


def _check_run_dir(paths: RunPaths, resume: bool, overwrite: bool) -> None:
    if paths.root.exists() and not (resume or overwrite):
        raise ZofedError(
            f"run directory '{paths.root}' already exists; pass --resume to continue it, "
            "--overwrite to start over, or choose another name=..."
        )


def _write_run_files(paths: RunPaths, config: RunConfig, history: list[dict]) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.summary.unlink(missing_ok=True)
    (paths.root / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    # On resume the metrics file is rebuilt from the checkpoint, dropping any round written after it.
    paths.metrics.write_text("".join(json.dumps(row) + "\n" for row in history))


def _write_json(path, document: dict) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
    staging.replace(path)


class _Clock:
    """Run time accumulated across resumed sessions."""

    def __init__(self, before_s: float, started: float) -> None:
        self._before_s, self._started = before_s, started

    def elapsed(self) -> float:
        return self._before_s + time.perf_counter() - self._started
