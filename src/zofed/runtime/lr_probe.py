"""`lr: auto`: a learning-rate range test on client 0's training stream before round 1.

Every ZO method shares it (`LR_PROBE` in algorithms/settings.py) and runs through its own code:
a candidate is a few probe rounds of the method itself — `configure`, client 0's `train`,
screening and `aggregate`, the round body every runtime plays (runtime/round.py) — with that
candidate's lr and a short local run, from the run's initial weights and on the run's own round
seeds, so every candidate sees the same directions and batches. After each probe round the
model's loss on a fixed held batch of client 0's training data is the candidate's curve.

The pick (`pick`): the largest lr whose loss falls (its last point at least `FALL` below the
start) without diverging (no point above the start by `DIVERGE`, none non-finite), then `BACKOFF`
steps down the grid: a short probe sees only the first steps, and an lr at the edge of its window
diverges later in a long run (docs/results.md: 6e-4 trains on the quickstart, 1e-3 diverges).

The scan is coarse to fine and from the top, so its cost stays small: the decades from the
largest down until one falls, then the grid points between it and the decade above. A candidate
stops at its first diverged point. The probe's budget is a share (`SHARE`) of the run's planned
forward passes: the local steps per candidate are sized from it (`probe_steps`).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from zofed.algorithms import build_algorithm
from zofed.config import FaultsConfig, RobustConfig
from zofed.errors import ZofedError
from zofed.eval import evaluate_loss
from zofed.status import phase

# 1-2-5 per decade, 1e-6 .. 1e-1: ZO learning rates for LLM fine-tuning live in this range.
GRID = tuple(round(mantissa * 10.0 ** exponent, 12) for exponent in range(-6, -1) for mantissa in (1, 2, 5)) + (0.1,)
FALL = 1e-4  # relative fall of the held loss a candidate needs (the held batch is fixed: no sampling noise)
DIVERGE = 0.05  # a point this far (relative) above the start, or non-finite, is divergence
BACKOFF = 2  # grid steps below the largest falling lr (×0.4 or ×0.5 per step: about ×0.2 in all)
ROUNDS = 2  # probe rounds per candidate: a diverging one stops after the first
SHARE = 0.2  # of the run's planned forward passes, which the scan's expected cost is sized to
EXPECTED_CANDIDATES = 6  # what a scan costs typically (decades from the top, then two refinements)
HELD_EXAMPLES, HELD_BATCHES = 4, 2  # the curve's examples of client 0: max(4, 2 local batches)
RECORD = "lr_probe.json"
PLOT = "lr_probe.png"


@dataclass(frozen=True)
class Candidate:
    """One candidate's probe: its lr, the held loss after each probe round, its forward passes and bytes."""

    lr: float
    losses: tuple[float, ...]
    forward_passes: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def diverged(start: float, losses: Sequence[float]) -> bool:
    return any(not math.isfinite(loss) or loss > start * (1 + DIVERGE) for loss in losses)


def falls(start: float, candidate: Candidate) -> bool:
    """The candidate's loss fell by FALL without ever diverging on the way."""
    losses = candidate.losses
    return bool(losses) and not diverged(start, losses) and losses[-1] <= start * (1 - FALL)


def pick(start: float, candidates: Sequence[Candidate], grid: Sequence[float] = GRID, backoff: int = BACKOFF) -> float | None:
    """The grid lr `backoff` steps below the largest candidate that falls; None where none falls."""
    good = [c.lr for c in candidates if falls(start, c)]
    if not good:
        return None
    return grid[max(grid.index(max(good)) - backoff, 0)]


def scan_order(is_good, grid: Sequence[float] = GRID) -> None:
    """Call `is_good(lr)` coarse to fine from the top: decades down to the first that falls, then the
    grid points between it and the decade above, from the top, until one falls."""
    decades = [lr for lr in grid if math.isclose(math.log10(lr), round(math.log10(lr)))]
    for decade in sorted(decades, reverse=True):
        if is_good(decade):
            above = [lr for lr in grid if decade < lr < decade * 10]
            for lr in sorted(above, reverse=True):
                if is_good(lr):
                    return
            return


def probe_steps(config, forwards_per_step: int) -> int:
    """Local steps per probe round: the scan's expected cost (EXPECTED_CANDIDATES × ROUNDS rounds plus
    the held evaluations) at most SHARE of the run's planned forward passes; at least 1, at most the
    run's own local steps."""
    local = config.local
    planned = config.rounds * config.sampled_per_round() * local.local_steps * forwards_per_step
    per_round = SHARE * planned / (EXPECTED_CANDIDATES * ROUNDS) - held_forwards(config)
    return max(1, min(local.local_steps, int(per_round // forwards_per_step)))


def held_forwards(config) -> int:
    """One evaluation of the held batch in forward passes at the run's local batch size (its cost unit)."""
    return math.ceil(held_examples(config) / config.local.batch_size)


def held_examples(config) -> int:
    return max(HELD_EXAMPLES, HELD_BATCHES * config.local.batch_size)


class _Client0:
    """The run's population seen by the probe: client 0 alone, with the probe's local steps."""

    def __init__(self, experiment, steps: int) -> None:
        self.experiment = replace(experiment, config=experiment.config.model_copy(
            update={"local": experiment.config.local.model_copy(update={"local_steps": steps})}))
        self.local_steps = steps

    def sample_clients(self, round: int) -> list[int]:
        return [0]

    def client_seed(self, round: int, client: int) -> int:
        return self.experiment.client_seed(round, client)

    def examples(self, client: int) -> int | None:
        return self.experiment.examples(client)

    def client_env(self, round: int, client: int):
        return self.experiment.client_env(round, client)


def lr_range_test(settings, experiment) -> tuple[float, dict[str, bytes]]:
    """The lr `lr: auto` resolves to, and the files the run directory keeps of the probe (its record and plot)."""
    from zofed.runtime.client import KeptStore

    config = experiment.config
    initial = experiment.view.state_dict(experiment.device)
    held = held_batch(experiment)
    batch = config.eval.batch_size

    def held_loss() -> float:
        return evaluate_loss(experiment.model, held, experiment.pad_token_id, batch)

    start = held_loss()
    per_step = _forwards_per_step(experiment, settings, initial)
    steps = probe_steps(config, per_step)
    candidates: list[Candidate] = []

    def is_good(lr: float) -> bool:
        algorithm = build_algorithm(config.algorithm, settings.model_copy(update={"lr": lr}))
        state = algorithm.init(initial, config.seed)
        experiment.view.load_(initial)
        losses, forwards, up, down = [], 0, 0, 0
        with tempfile.TemporaryDirectory(prefix="zofed-lr-probe-") as scratch:
            kept = KeptStore(Path(scratch))
            for round in range(1, ROUNDS + 1):
                state, row = _client0_round(experiment, algorithm, state, round, steps, kept)
                experiment.view.load_(state.weights)
                losses.append(held_loss())
                forwards += row["forward_passes"] + held_forwards(config)
                up, down = up + row["bytes_up"], down + row["bytes_down"]
                if diverged(start, losses):
                    break
        candidates.append(Candidate(lr, tuple(losses), forwards, up, down))
        return falls(start, candidates[-1])

    try:
        with phase(f"lr: auto: range test on client 0 ({config.algorithm}, {steps} local steps per probe round)"):
            scan_order(is_good)
    finally:
        experiment.view.load_(initial)  # round 1 starts from the initial weights, whatever the probe did
    chosen = pick(start, candidates)
    record = {"lr": chosen, "start_loss": start, "held_examples": len(held), "local_steps": steps,
              "rounds_per_candidate": ROUNDS, "backoff": BACKOFF,
              # the start's held evaluation and the one-step round that sized the probe count too
              "forward_passes": held_forwards(config) + per_step + sum(c.forward_passes for c in candidates),
              "bytes_up": sum(c.bytes_up for c in candidates), "bytes_down": sum(c.bytes_down for c in candidates),
              "candidates": [asdict(c) | {"falls": falls(start, c)} for c in candidates]}
    if chosen is None:
        tried = ", ".join(f"{c.lr:g}: {c.losses[-1]:.4g}" for c in candidates)
        raise ZofedError(f"lr: auto found no lr in {GRID[0]:g}..{GRID[-1]:g} that lowers client 0's held loss "
                         f"{start:.4g} (tried {tried}); give {config.algorithm}.lr in the config, "
                         f"or raise {config.algorithm}.mu or local.local_steps")
    return chosen, record_files(record, f"{config.name}: {config.algorithm}")


def _forwards_per_step(experiment, settings, initial) -> int:
    """Forward passes of one local step of this method, from a one-step round 1 at the grid's smallest lr
    (a throwaway round: the scan starts again from `initial`)."""
    from zofed.runtime.client import KeptStore

    algorithm = build_algorithm(experiment.config.algorithm, settings.model_copy(update={"lr": GRID[0]}))
    with tempfile.TemporaryDirectory(prefix="zofed-lr-probe-") as scratch:
        _, row = _client0_round(experiment, algorithm, algorithm.init(initial, experiment.config.seed), 1, 1,
                                KeptStore(Path(scratch)))
    experiment.view.load_(initial)
    return max(1, int(row["forward_passes"]))


def _client0_round(experiment, algorithm, state, round: int, steps: int, kept):
    """One probe round: client 0 alone, `steps` local steps, through the method's own round body."""
    from zofed.runtime.round import InProcessTransport, play_round

    population = _Client0(experiment, steps)
    transport = InProcessTransport(population, algorithm, kept, FaultsConfig(), experiment.config.seed)
    return play_round(population, algorithm, state, round, transport, RobustConfig())


def held_batch(experiment) -> list:
    """The first `held_examples` of client 0's training examples (its partition's order: fixed by the seed)."""
    indices = list(experiment.data.client_indices[0])[: held_examples(experiment.config)]
    return [experiment.train_tokens[i] for i in indices]


def record_files(record: dict, title: str) -> dict[str, bytes]:
    """lr_probe.json and lr_probe.png: the pick and every candidate's curve."""
    from zofed.report import plot_lr_probe  # matplotlib only where a probe ran

    return {RECORD: (json.dumps(record, indent=2, allow_nan=True) + "\n").encode(), PLOT: plot_lr_probe(record, title)}


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's probe record for summary.json: the resolved lr, its forward passes and bytes; None without one."""
    path = run_dir / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        keys = ("lr", "forward_passes", "bytes_up", "bytes_down", "local_steps")
        return {key: record[key] for key in keys} | {"candidates": len(record["candidates"]), "record": RECORD}
    except (ValueError, KeyError, TypeError):
        return None  # the run directory is untrusted: a damaged record is left out of the summary, not trusted
