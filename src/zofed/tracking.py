"""Where a run's per-round rows go besides metrics.jsonl: TensorBoard, W&B, and the console.

A sink is anything with `round(row, values)` and `close()`; `open_tracking` picks the sinks a config asks
for and the console form the output allows (a live bar on a terminal, one plain line per round
otherwise, so nohup and SLURM logs show progress). Every sink gets the same flat scalars
(`scalars(row)`), so TensorBoard and W&B show the same numbers as metrics.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from zofed.errors import ZofedError

if TYPE_CHECKING:
    from zofed.config import RunConfig, TrackingConfig


def check_tracking(settings: TrackingConfig) -> None:
    """Refuse a run whose logging cannot start, before it writes anything.

    Checked where the run is played (the ServerApp's machine under Flower), not when the config is
    parsed: SuperNodes and `zofed eval` read the same config and need no W&B.
    """
    if settings.wandb and importlib.util.find_spec("wandb") is None:
        raise ZofedError("tracking.wandb=true needs the wandb package: `pip install wandb`, or set tracking.wandb=false")


# Validation loss that moved less than this share of its value over the first STALL_EVALUATIONS
# evaluations after the start: the learning rate is almost surely far too small (ZO's window is narrow).
STALL_RELATIVE_CHANGE = 1e-3
STALL_EVALUATIONS = 2


def stall_warning(initial_eval_loss: float | None, history: list[dict], settings: object, algorithm: str) -> str | None:
    """One line when the run has evaluated exactly STALL_EVALUATIONS times and the loss has barely moved."""
    evaluated = [row["eval_loss"] for row in history if row.get("eval_loss") is not None]
    if initial_eval_loss is None or len(evaluated) != STALL_EVALUATIONS or not math.isfinite(initial_eval_loss):
        return None
    latest = evaluated[-1]
    if not math.isfinite(latest) or initial_eval_loss == 0:
        return None
    change = abs(latest - initial_eval_loss) / abs(initial_eval_loss)
    if change >= STALL_RELATIVE_CHANGE:
        return None
    knobs = [f"{algorithm}.{key} (now {getattr(settings, key):g})" for key in ("lr", "mu")
             if isinstance(getattr(settings, key, None), (int, float))]
    advice = f"raise {' and tune '.join(knobs)}" if knobs else f"tune {algorithm}'s settings"
    # the two tools that find the lr for the user: the range test before round 1, or a search over runs
    # (lr: auto is the ZO methods', the ones with a perturbation scale mu)
    tune = f"`zofed tune CONFIG --param {algorithm}.lr=1e-6:1e-2:log`"
    finders = (f"set {algorithm}.lr=auto (a range test before round 1) or run {tune}" if hasattr(settings, "mu")
               else f"run {tune}")
    return (f"zofed: warning: validation loss moved {change:.2%} in {STALL_EVALUATIONS} evaluations "
            f"({initial_eval_loss:.5f} -> {latest:.5f}, under the {STALL_RELATIVE_CHANGE:.1%} this warning checks): "
            f"the learning rate is probably too small for this model and data; {finders}, or {advice} by hand "
            "(a ZO method's stable lr range is narrow)")


class Sink(Protocol):
    def round(self, row: dict, values: dict[str, float]) -> None:
        """`row` as in metrics.jsonl; `values` its `scalars`."""

    def close(self) -> None: ...


def scalars(row: dict, default_lr: float | None = None) -> dict[str, float]:
    """The round row's numbers under the tags every sink uses; absent and non-finite values are left out.

    `default_lr` (the algorithm's configured lr) stands in when no client row says which rate it used.
    """
    values: dict[str, float | int | None] = {
        "loss/train": row.get("train_loss"),
        "loss/validation": row.get("eval_loss"),
        "bytes/up": row.get("bytes_up"),
        "bytes/down": row.get("bytes_down"),
        "compute/forward_passes": row.get("forward_passes"),
        "compute/layer_forwards": row.get("layer_forwards"),
        "compute/skipped_steps": row.get("skipped_steps"),
        "memory/peak_rss_mb": row.get("peak_rss_mb"),
        "time/round_s": row.get("seconds"),
        "lr": round_lr(row, default_lr),
        "clients/sampled": len(row.get("clients", ())),
        "clients/dropped": len(row.get("dropped", ())),
        "clients/rejected": len(row.get("rejected", {})),
        "privacy/epsilon": row.get("privacy_epsilon"),  # privacy.dp: step: the largest ε any client has spent
    }
    for client, spent in row.get("privacy_epsilon_by_client", {}).items():
        values[f"privacy/epsilon_client_{client}"] = spent
    for direction in ("up", "down"):
        for kind, count in row.get(f"bytes_{direction}_by_kind", {}).items():
            values[f"bytes/{direction}_{kind}"] = count
    return {tag: float(value) for tag, value in values.items() if value is not None and math.isfinite(float(value))}


def round_lr(row: dict, default_lr: float | None = None) -> float | None:
    """The mean client learning rate of the round (clients may differ: FedMeZO's personalised rates)."""
    rates = [client["lr"] for client in row.get("per_client", ()) if client.get("lr") is not None]
    return sum(rates) / len(rates) if rates else default_lr


def loss_text(row: dict) -> str:
    """The loss the console shows, named: validation when the round evaluated, train otherwise."""
    if row.get("eval_loss") is not None:
        return f"val loss {row['eval_loss']:.4f}"
    return f"train loss {row['train_loss']:.4f}"


class TensorBoardSink:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: ClientApp processes never log

        # Rounds are logged after their checkpoint, so a resumed run never logs a round twice. The writer
        # (and its event file) starts with the first value: a resumed finished run leaves no empty file.
        self._open = lambda: SummaryWriter(str(log_dir))
        self._writer_or_none = None

    @property
    def _writer(self):
        if self._writer_or_none is None:
            self._writer_or_none = self._open()
        return self._writer_or_none

    def round(self, row: dict, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, row["round"], walltime=row.get("time"))
        self._writer.flush()  # a crash or a reader mid-run sees every finished round

    def evaluation(self, step: int, values: dict[str, float], walltime: float | None = None) -> None:
        """The before-training evaluation (step 0) or the final one (step = the last round)."""
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step, walltime=walltime)
        self._writer.flush()

    def config(self, document: dict) -> None:
        # The resolved config as text, readable whole
        self._writer.add_text("config", "```yaml\n" + json.dumps(document, indent=2) + "\n```", 0)
        self._writer.flush()

    def hparams(self, document: dict, metric_tags: list[str]) -> None:
        """The resolved config as hparams, with the final metrics: TensorBoard's HPARAMS tab compares runs.

        Written into this run's own event file: `SummaryWriter.add_hparams` would open a second, nested
        run directory for them. The metrics' values are this run's scalars under `metric_tags`.
        """
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(flat_hparams(document), {tag: 0.0 for tag in metric_tags}):
            self._writer.file_writer.add_summary(summary)
        self._writer.flush()

    def close(self) -> None:
        if self._writer_or_none is not None:
            self._writer_or_none.close()


def flat_hparams(document: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """A nested config as dotted keys with the values hparams take: numbers, strings and booleans
    as they are, anything else (lists, null) as its JSON text."""
    flat: dict[str, float | int | str | bool] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return flat


class WandbSink:
    def __init__(self, config: RunConfig, log_dir: Path) -> None:
        import wandb

        settings = config.tracking
        self._run = wandb.init(
            project=settings.wandb_project, name=config.name, dir=str(log_dir), mode=settings.wandb_mode,
            config=config.to_dict(),
        )

    def round(self, row: dict, values: dict[str, float]) -> None:
        self._run.log(values, step=row["round"])

    def evaluation(self, step: int, values: dict[str, float], walltime: float | None = None) -> None:
        self._run.log(values, step=step)

    def close(self) -> None:
        self._run.finish()


class PlainLines:
    """One line per round on a stream that is not a terminal (files, pipes, batch-system logs)."""

    def __init__(self, name: str, total: int, stream: TextIO) -> None:
        self._name, self._total, self._stream = name, total, stream

    def round(self, row: dict, values: dict[str, float]) -> None:
        parts = [f"{self._name} round {row['round']}/{self._total}", loss_text(row)]
        if row.get("eval_loss") is not None and math.isfinite(row.get("train_loss", math.nan)):
            parts.append(f"train loss {row['train_loss']:.4f}")
        parts.append(f"up {row['bytes_up']} B down {row['bytes_down']} B forwards {row['forward_passes']}")
        if row.get("peak_rss_mb") is not None:
            parts.append(f"peak {row['peak_rss_mb']:.0f} MB")
        if "lr" in values:
            parts.append(f"lr {values['lr']:.3g}")
        parts.append(f"{row['seconds']:.1f} s")
        print("  ".join(parts), file=self._stream, flush=True)

    def close(self) -> None:
        pass


class ProgressBar:
    """A live bar on the terminal; its loss column says which loss it shows.

    The ETA counts the rounds left at their mean duration so far plus the final evaluation, taken to
    last as long as the before-training one (the same validation, test and accuracy work).
    """

    def __init__(self, total: int, first_round: int, console: Console, evaluation_s: float = 0.0) -> None:
        self._progress = Progress(
            TextColumn("[bold]round {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
        )
        self._total, self._evaluation_s, self._round_s = total, evaluation_s, []
        self._task = self._progress.add_task("rounds", total=total, completed=first_round - 1, loss="loss -", eta="-")
        self._progress.start()

    def round(self, row: dict, values: dict[str, float]) -> None:
        self._round_s.append(float(row.get("seconds", 0.0)))
        left = self._total - row["round"]
        eta_s = left * sum(self._round_s) / len(self._round_s) + self._evaluation_s
        self._progress.update(self._task, advance=1, loss=loss_text(row), eta=_duration(eta_s))

    def console(self) -> Console:
        return self._progress.console

    def close(self) -> None:
        self._progress.stop()  # stopping twice is harmless


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Tracking:
    """Sends each round row to every sink, the before/after evaluations to those that plot them, and
    warns once when the validation loss has barely moved (`stall_warning`)."""

    def __init__(self, sinks: list[Sink], default_lr: float | None, initial: dict | None = None,
                 history: list[dict] | None = None, warn: Callable[[str], None] | None = None,
                 settings: object = None, algorithm: str = "") -> None:
        self.sinks, self._default_lr = sinks, default_lr
        self._initial, self._history = initial or {}, list(history or [])
        self._warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self._settings, self._algorithm = settings, algorithm

    def start(self, config_document: dict) -> None:
        """A new run (not a resumed one): its config and the before-training evaluation as step 0."""
        for sink in self.sinks:
            if hasattr(sink, "config"):
                sink.config(config_document)
        self._evaluation(0, self._initial)

    def round(self, row: dict) -> None:
        values = scalars(row, self._default_lr)
        for sink in self.sinks:
            sink.round(row, values)
        self._history.append(row)
        warning = stall_warning(self._initial.get("eval_loss"), self._history, self._settings, self._algorithm)
        if warning is not None and row.get("eval_loss") is not None:
            self._warn(warning)

    def end_rounds(self) -> None:
        """Stop the live bar: the final evaluation shows its own status line."""
        for sink in self.sinks:
            if isinstance(sink, ProgressBar):
                sink.close()

    def final(self, step: int, evaluation: dict, config_document: dict | None = None) -> None:
        """The after-training test metrics, at the last round's step (that round logged the
        same model's validation loss), and the config as hparams with the final metrics."""
        values = self._evaluation(step, {key: value for key, value in evaluation.items() if key != "eval_loss"})
        if config_document is None:
            return
        tags = [tag for tag in EVALUATION_TAGS.values() if tag in values or tag == "loss/validation"]
        for sink in self.sinks:
            if hasattr(sink, "hparams"):
                sink.hparams(config_document, tags)

    def _evaluation(self, step: int, evaluation: dict) -> dict[str, float]:
        values = {tag: float(evaluation[key]) for key, tag in EVALUATION_TAGS.items()
                  if evaluation.get(key) is not None and math.isfinite(float(evaluation[key]))}
        if values:
            for sink in self.sinks:
                if hasattr(sink, "evaluation"):
                    sink.evaluation(step, values, evaluation.get("time"))
        return values


# The evaluation's keys (driver.evaluate_all: test_<metric>) and their tags; the generation metrics under test/.
EVALUATION_TAGS = {"eval_loss": "loss/validation", "test_loss": "loss/test", "test_exact_match": "test/exact_match",
                   "test_rouge_l": "test/rouge_l", "test_gsm8k_answer": "test/gsm8k_answer"}


@contextmanager
def open_tracking(config: RunConfig, run_dir: Path, first_round: int, show_progress: bool = True,
                  initial: dict | None = None, history: list[dict] | None = None) -> Iterator[Tracking]:
    """The sinks for one run session: console (bar or lines), TensorBoard and W&B as configured.

    `initial`: the before-training evaluation (with its `seconds`, for the ETA); `history`: the rounds
    played before this session. Console output goes to stderr: stdout carries the summary JSON.
    """
    console = Console(stderr=True)
    sinks: list[Sink] = []
    warn = None
    try:
        if console.is_terminal:
            if show_progress:
                bar = ProgressBar(config.rounds, first_round, console, float((initial or {}).get("seconds", 0.0)))
                sinks.append(bar)
                warn = bar.console().print  # above the live bar, not through it
        else:
            sinks.append(PlainLines(config.name, config.rounds, sys.stderr))
        if config.tracking.tensorboard:
            sinks.append(TensorBoardSink(run_dir))
        if config.tracking.wandb:
            sinks.append(WandbSink(config, run_dir))
        yield Tracking(sinks, getattr(config.algorithm_settings, "lr", None), initial, history, warn,
                       config.algorithm_settings, config.algorithm)
    finally:
        for sink in reversed(sinks):
            sink.close()
