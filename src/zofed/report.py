"""Plots a run's metrics: validation loss against round and against cumulative bytes."""

from __future__ import annotations

import io
import math

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from zofed.atomic import atomic_path  # noqa: E402


def plot_run(rounds: Sequence[dict], initial_eval_loss: float, path: Path, title: str) -> None:
    evaluated = [row for row in rounds if row.get("eval_loss") is not None]
    x_round = [0] + [row["round"] for row in evaluated]
    y_loss = [initial_eval_loss] + [row["eval_loss"] for row in evaluated]
    cumulative, total = {}, 0
    for row in rounds:
        total += row["bytes_up"] + row["bytes_down"]
        cumulative[row["round"]] = total
    x_bytes = [0] + [cumulative[row["round"]] / 1e6 for row in evaluated]

    figure, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    by_round.plot(x_round, y_loss, marker="o")
    by_round.set(xlabel="round", ylabel="validation loss", title="loss vs round")
    by_bytes.plot(x_bytes, y_loss, marker="o", color="tab:orange")
    by_bytes.set(xlabel="cumulative bytes up + down (MB)", ylabel="validation loss", title="loss vs bytes")
    for axis in (by_round, by_bytes):
        axis.grid(alpha=0.3)
        # The loss as plain numbers: matplotlib would write a small change as `1e-5+1.08135e1`.
        axis.yaxis.set_major_formatter(ScalarFormatter(useOffset=False, useMathText=False))
        axis.yaxis.get_major_formatter().set_scientific(False)
    figure.suptitle(title)
    try:
        with atomic_path(path) as staging:
            figure.savefig(staging, dpi=110)
    finally:
        plt.close(figure)


def plot_lr_probe(record: dict, title: str) -> bytes:
    """The lr range test (runtime/lr_probe.py): each candidate's held loss after each probe round, and the pick."""
    figure, (curves, finals) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    start = record["start_loss"]
    for candidate in record["candidates"]:
        points = [start] + [loss if math.isfinite(loss) else math.nan for loss in candidate["losses"]]
        window = candidate.get("phase") == "window"
        curves.plot(range(len(points)), points, marker="o", linestyle="-" if window else ":",
                    label=f"{candidate['lr']:g}" + (" (window)" if window else ""))
    curves.set(xlabel="probe round", ylabel="held loss (client 0)", title="each candidate's curve")
    curves.legend(title="lr", fontsize=7)
    tried = sorted((c for c in record["candidates"] if c.get("phase", "bracket") == "bracket"), key=lambda c: c["lr"])
    last = [c["losses"][-1] if c["losses"] and math.isfinite(c["losses"][-1]) else math.nan for c in tried]
    finals.plot([c["lr"] for c in tried], last, marker="o")
    finals.axhline(start, color="grey", linestyle="--", label="start")
    if record["lr"] is not None:
        finals.axvline(record["lr"], color="tab:green", label=f"chosen {record['lr']:g}")
    finals.set(xscale="log", xlabel="lr", ylabel="held loss after the probe", title="bracket: last point per lr")
    finals.legend(fontsize=7)
    for axis in (curves, finals):
        axis.grid(alpha=0.3)
        axis.set_ylim(top=start * 1.25)  # a diverged candidate's loss would flatten every other curve
        axis.yaxis.set_major_formatter(ScalarFormatter(useOffset=False, useMathText=False))
        axis.yaxis.get_major_formatter().set_scientific(False)
    figure.suptitle(title)
    image = io.BytesIO()
    try:
        figure.savefig(image, format="png", dpi=110)
    finally:
        plt.close(figure)
    return image.getvalue()
