"""Where a run's per-round rows go besides metrics.jsonl: TensorBoard, W&B, and the console.

A sink is anything with `round(row, values)` and `close()`; `open_tracking` picks the sinks a config asks
for and the console form the output allows (a live bar on a terminal, one plain line per round
otherwise, so nohup and SLURM logs show progress). Every sink gets the same flat scalars
(`scalars(row)`), so TensorBoard and W&B show the same numbers as metrics.jsonl.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
    }
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

        # Rounds are logged after their checkpoint, so a resumed run never logs a round twice.
        self._writer = SummaryWriter(str(log_dir))

    def round(self, row: dict, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, row["round"])
        self._writer.flush()  # a crash or a reader mid-run sees every finished round

    def close(self) -> None:
        self._writer.close()


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
    """A live bar on the terminal; its loss column says which loss it shows."""

    def __init__(self, total: int, first_round: int, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]round {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._progress.add_task("rounds", total=total, completed=first_round - 1, loss="loss -")
        self._progress.start()

    def round(self, row: dict, values: dict[str, float]) -> None:
        self._progress.update(self._task, advance=1, loss=loss_text(row))

    def close(self) -> None:
        self._progress.stop()


class Tracking:
    """Sends each round row to every sink."""

    def __init__(self, sinks: list[Sink], default_lr: float | None) -> None:
        self.sinks, self._default_lr = sinks, default_lr

    def round(self, row: dict) -> None:
        values = scalars(row, self._default_lr)
        for sink in self.sinks:
            sink.round(row, values)


@contextmanager
def open_tracking(config: RunConfig, run_dir: Path, first_round: int, show_progress: bool = True) -> Iterator[Tracking]:
    """The sinks for one run session: console (bar or lines), TensorBoard and W&B as configured.

    Console output goes to stderr: stdout carries the summary JSON.
    """
    console = Console(stderr=True)
    sinks: list[Sink] = []
    try:
        if console.is_terminal:
            if show_progress:
                sinks.append(ProgressBar(config.rounds, first_round, console))
        else:
            sinks.append(PlainLines(config.name, config.rounds, sys.stderr))
        if config.tracking.tensorboard:
            sinks.append(TensorBoardSink(run_dir))
        if config.tracking.wandb:
            sinks.append(WandbSink(config, run_dir))
        yield Tracking(sinks, getattr(config.algorithm_settings, "lr", None))
    finally:
        for sink in reversed(sinks):
            sink.close()
