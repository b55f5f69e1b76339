"""`lr: auto`: a learning-rate range test on the clients' training streams before round 1.

Every ZO method shares it (`LR_PROBE` in algorithms/settings.py) and runs through its own code:
a candidate is probe rounds of the method itself — `configure`, one client's `train`, screening and
`aggregate`, the round body every runtime plays (runtime/round.py) — with that candidate's lr, from
the run's initial weights and on the run's own round seeds, so every candidate sees the same
directions and batches. After each probe round the model's loss on a fixed held batch of
held-out data (`held_batch`) is a point of the candidate's curve.

Two phases, because a ZO step's noise hides divergence for the first few steps (measured: an lr
that fell over one step diverged over the run's sixty; docs/results.md):
- **Bracket** (short): one probe round of a few steps per candidate, coarse to fine from the top of
  the grid (`scan_order`), finds `top`, the largest lr whose loss falls (`falls`) at all.
- **Stability window** (long): from one grid step below `top` (the safety factor) downwards, each
  candidate plays `WINDOW_POINTS` consecutive probe rounds of as many steps as the budget allows,
  probe round r on client r-1 (`window_client`): with a non-IID split one client's data can be
  gentler than the population's (measured on the quickstart: client 0's 18 steps at 2e-3 fell
  steadily, and the run at 2e-3 diverged on client 1's data in round 2);
  the first whose curve falls, never diverges and still keeps at least `KEEP` of its best fall at
  its end (`holds`: a curve that turns back up is at its edge) is the pick.

The cost is capped: everything the probe runs counts against `BUDGET` of the run's planned forward
passes; the bracket's steps are sized to `BRACKET_SHARE` of it, the window's to what is left over
`WINDOWS` windows. Where the budget runs out before a window holds, the pick is the grid step below
the last window tried, recorded as unchecked and said in one line.
"""

from __future__ import annotations

import json
import math
import sys
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
KEEP = 0.5  # a window's last point keeps at least this share of the best fall its curve reached
BUDGET = 0.24  # of the run's planned forward passes: the probe's whole cost, bracket and windows (goal: <= 25%)
BRACKET_SHARE = 0.25  # of the budget, which the bracket's steps are sized to
BRACKET_CANDIDATES = 5  # what a bracket scan costs typically (decades from the top, then refinements)
WINDOW_POINTS = 3  # probe rounds per stability window: its curve
WINDOWS = 2  # windows the rest of the budget is sized for (a failing one usually stops at its first point)
HELD_EXAMPLES, HELD_BATCHES = 8, 2  # the curve's held-out examples: max(8, 2 local batches)
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
    phase: str = "bracket"  # or "window"
    local_steps: int = 1  # per probe round
    clients: tuple[int, ...] = ()  # the client each probe round trained


def diverged(start: float, losses: Sequence[float]) -> bool:
    return any(not math.isfinite(loss) or loss > start * (1 + DIVERGE) for loss in losses)


def falls(start: float, candidate: Candidate) -> bool:
    """The candidate's loss fell by FALL without ever diverging on the way."""
    losses = candidate.losses
    return bool(losses) and not diverged(start, losses) and losses[-1] <= start * (1 - FALL)


def holds(start: float, candidate: Candidate) -> bool:
    """A window that falls and, at its end, still keeps KEEP of the best fall its curve reached."""
    if not falls(start, candidate):
        return False
    best = min(candidate.losses)
    return candidate.losses[-1] - best <= (1 - KEEP) * (start - best)


def bracket_top(start: float, candidates: Sequence[Candidate]) -> float | None:
    """The largest bracket lr that falls; None where none does."""
    good = [c.lr for c in candidates if c.phase == "bracket" and falls(start, c)]
    return max(good, default=None)


def window_order(top: float, grid: Sequence[float] = GRID) -> list[float]:
    """The stability windows' candidates: the grid below `top`, from one step below it downwards (`top`
    itself where it is the grid's smallest)."""
    return sorted((lr for lr in grid if lr < top), reverse=True) or [top]


def pick(start: float, candidates: Sequence[Candidate]) -> float | None:
    """The largest window candidate that holds; None where none does."""
    return max((c.lr for c in candidates if c.phase == "window" and holds(start, c)), default=None)


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


def budget_forwards(config, forwards_per_step: int) -> int:
    """The probe's whole budget: BUDGET of the run's planned forward passes."""
    planned = config.rounds * config.sampled_per_round() * config.local.local_steps * forwards_per_step
    return int(BUDGET * planned)


def steps_for(config, forwards: float, rounds: int, forwards_per_step: int) -> int:
    """Local steps per probe round for `rounds` probe rounds (each followed by a held evaluation) to cost
    about `forwards`; at least 1, at most the run's own local steps."""
    per_round = forwards / rounds - held_forwards(config)
    return max(1, min(config.local.local_steps, int(per_round // forwards_per_step)))


def held_forwards(config) -> int:
    """One evaluation of the held batch in forward passes at the run's local batch size (its cost unit)."""
    return math.ceil(held_examples(config) / config.local.batch_size)


def held_examples(config) -> int:
    return max(HELD_EXAMPLES, HELD_BATCHES * config.local.batch_size)


def window_client(round: int, clients: int) -> int:
    """The client a stability window's probe round `round` (from 1) trains: each in turn."""
    return (round - 1) % clients


class _OneClient:
    """The run's population seen by the probe: one client alone, with the probe's local steps."""

    def __init__(self, experiment, steps: int, client: int) -> None:
        self.experiment = replace(experiment, config=experiment.config.model_copy(
            update={"local": experiment.config.local.model_copy(update={"local_steps": steps})}))
        self.local_steps, self.client = steps, client

    def sample_clients(self, round: int) -> list[int]:
        return [self.client]

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
    budget = budget_forwards(config, per_step)
    candidates: list[Candidate] = []

    def spent() -> int:  # the start's held evaluation and the one-step round that sized the probe count too
        return held_forwards(config) + per_step + sum(c.forward_passes for c in candidates)

    def trial(lr: float, rounds: int, steps: int, kind: str) -> Candidate:
        """`rounds` consecutive probe rounds of `steps` local steps at `lr` from the initial weights."""
        algorithm = build_algorithm(config.algorithm, settings.model_copy(update={"lr": lr}))
        state = algorithm.init(initial, config.seed)
        experiment.view.load_(initial)
        losses, clients, forwards, up, down = [], [], 0, 0, 0
        with tempfile.TemporaryDirectory(prefix="zofed-lr-probe-") as scratch:
            kept = KeptStore(Path(scratch))
            for round in range(1, rounds + 1):
                client = window_client(round, config.clients) if kind == "window" else 0
                clients.append(client)
                state, row = _probe_round(experiment, algorithm, state, round, steps, kept, client)
                experiment.view.load_(state.weights)
                losses.append(held_loss())
                forwards += row["forward_passes"] + held_forwards(config)
                up, down = up + row["bytes_up"], down + row["bytes_down"]
                if diverged(start, losses):
                    break
        candidates.append(Candidate(lr, tuple(losses), forwards, up, down, kind, steps, tuple(clients)))
        return candidates[-1]

    top, window_steps, windows = None, 0, []
    bracket_steps = steps_for(config, BRACKET_SHARE * budget / BRACKET_CANDIDATES, 1, per_step)
    checked = True
    try:
        with phase(f"lr: auto: bracket on client 0 ({config.algorithm}, {bracket_steps} local steps per candidate)"):
            scan_order(lambda lr: falls(start, trial(lr, 1, bracket_steps, "bracket")))
        top = bracket_top(start, candidates)
        window_steps = steps_for(config, (budget - spent()) / WINDOWS, WINDOW_POINTS, per_step)
        window_cost = WINDOW_POINTS * (window_steps * per_step + held_forwards(config))
        if top is not None:
            with phase(f"lr: auto: stability windows below {top:g} ({WINDOW_POINTS} probe rounds of "
                       f"{window_steps} local steps, one client each)"):
                for lr in window_order(top):
                    if windows and spent() + window_cost > budget:
                        break
                    windows.append(trial(lr, WINDOW_POINTS, window_steps, "window"))
                    if holds(start, windows[-1]):
                        break
    finally:
        experiment.view.load_(initial)  # round 1 starts from the initial weights, whatever the probe did
    chosen = pick(start, candidates)
    if chosen is None and windows:
        chosen, checked = window_order(windows[-1].lr)[0], False
        print(f"zofed: warning: lr: auto: no stability window held within the probe's budget ({BUDGET:.0%} of the "
              f"run's forward passes); using {chosen:g}, one grid step below the last tried, unchecked: see "
              f"lr_probe.png, or give {config.algorithm}.lr", file=sys.stderr, flush=True)
    record = {"lr": chosen, "start_loss": start, "held_examples": len(held), "checked": checked,
              "bracket_top": top, "bracket_local_steps": bracket_steps,
              "local_steps": window_steps, "window_rounds": WINDOW_POINTS, "keep": KEEP,
              "budget_forward_passes": budget, "forward_passes": spent(),
              "bytes_up": sum(c.bytes_up for c in candidates), "bytes_down": sum(c.bytes_down for c in candidates),
              "candidates": [asdict(c) | {"falls": falls(start, c), "holds": holds(start, c)} for c in candidates]}
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
        _, row = _probe_round(experiment, algorithm, algorithm.init(initial, experiment.config.seed), 1, 1,
                              KeptStore(Path(scratch)), 0)
    experiment.view.load_(initial)
    return max(1, int(row["forward_passes"]))


def _probe_round(experiment, algorithm, state, round: int, steps: int, kept, client: int):
    """One probe round: `client` alone, `steps` local steps, through the method's own round body."""
    from zofed.runtime.round import InProcessTransport, play_round

    population = _OneClient(experiment, steps, client)
    transport = InProcessTransport(population, algorithm, kept, FaultsConfig(), experiment.config.seed)
    return play_round(population, algorithm, state, round, transport, RobustConfig())


def held_batch(experiment) -> list:
    """Examples no candidate trains on: the first `held_examples` of the validation split (the loss the run is
    judged by), or, without one, the last of client 0's partition (its stream starts at the front). Measured on
    examples it had trained on, the probe took an lr that memorised them (held loss 2.68 -> 1.38 in 18 steps)
    while the run at that lr diverged from its second round."""
    count = held_examples(experiment.config)
    if len(experiment.val_tokens) >= count:
        return list(experiment.val_tokens[:count])
    indices = list(experiment.data.client_indices[0])[-count:]
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
