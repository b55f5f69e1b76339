"""Per-round metrics and the byte ledger; results are JSON lines a person can read and plot."""

from __future__ import annotations

import resource
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from zofed.runtime.codec import EncodedSizes


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last `reset_peak_rss` (or its start), in MiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, never reset


def reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM to the current RSS).

    The local runtime does this before each client so a client's peak is its own, not the
    largest seen anywhere in the process (model loading, another client, evaluation).
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def peak_of(values: Iterable[float | None]) -> float | None:
    """The largest measured value; None when nothing was measured (device memory on the CPU)."""
    return max((value for value in values if value is not None), default=None)


@dataclass
class ByteLedger:
    """Bytes as encoded, per client, per direction ("up"/"down") and per kind."""

    rows: list[dict] = field(default_factory=list)

    def record(self, client: int, direction: str, sizes: EncodedSizes) -> None:
        self.rows.append(
            {
                "client": client,
                "direction": direction,
                "total": sizes.total,
                "weights": sizes.weights,
                "records": sizes.records,
                "metrics": sizes.metrics,
                "control": sizes.control,
            }
        )

    def total(self, direction: str) -> int:
        return sum(row["total"] for row in self.rows if row["direction"] == direction)

    def by_kind(self, direction: str) -> dict[str, int]:
        kinds: dict[str, int] = defaultdict(int)
        for row in self.rows:
            if row["direction"] == direction:
                for kind in ("weights", "records", "metrics", "control"):
                    kinds[kind] += row[kind]
        return dict(kinds)

    def for_client(self, client: int, direction: str) -> int:
        return sum(r["total"] for r in self.rows if r["client"] == client and r["direction"] == direction)
