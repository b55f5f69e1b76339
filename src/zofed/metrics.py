"""Measurements a round reports: this process's peak memory and the peak over clients."""

from __future__ import annotations

import resource
from collections.abc import Iterable


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
