"""Status lines for the long steps of a run (loading the model, converting GGUF, evaluating, generating).

Round progress is tracking.py's; this is for the minutes before and after the rounds, which would
otherwise pass in silence. Imports only rich, so llm/ and data/ may use it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

# A phase shorter than this prints nothing when piped: a fast failure (bad input) stays one line.
PHASE_LINE_AFTER_S = 1.0
# A piped phase that reports progress (generation batches) prints its count at most this often.
PROGRESS_LINE_EVERY_S = 10.0
_spinner = None  # the terminal's spinner while a phase runs (rich shows one live display at a time)


Progress = Callable[[int, int], None]  # (done, total), e.g. examples generated so far


@contextmanager
def phase(text: str, live: bool = True) -> Iterator[Progress]:
    """Say what a long step is doing while it runs (loading the model, evaluating, generating).

    On a terminal, a transient spinner; otherwise (files, pipes, batch logs) one plain line on stderr
    once the phase has lasted PHASE_LINE_AFTER_S, and its duration when it ends. The phase hands out
    a `progress(done, total)` to call as work completes: the spinner shows the count, and a piped
    phase prints it at most every PROGRESS_LINE_EVERY_S.
    """
    global _spinner
    console = Console(stderr=True)
    if console.is_terminal and live:
        if _spinner is not None:  # a phase inside a phase (GGUF conversion while loading): one spinner, its text
            outer, spinner = _spinner.status, _spinner
            spinner.update(f"{text}...")
            try:
                yield lambda done, total: spinner.update(f"{text}... {done}/{total}")
            finally:
                spinner.update(outer)
            return
        with console.status(f"{text}...") as _spinner:
            spinner = _spinner
            try:
                yield lambda done, total: spinner.update(f"{text}... {done}/{total}")
            finally:
                _spinner = None
        return
    started = time.perf_counter()
    said = threading.Event()
    last_line = [started]

    def say() -> None:
        said.set()
        print(f"zofed: {text}...", file=sys.stderr, flush=True)

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if live and said.is_set() and now - last_line[0] >= PROGRESS_LINE_EVERY_S and done < total:
            last_line[0] = now
            print(f"zofed: {text}: {done}/{total}", file=sys.stderr, flush=True)

    timer = threading.Timer(PHASE_LINE_AFTER_S, say)
    timer.daemon = True
    timer.start()
    try:
        yield progress
    finally:
        timer.cancel()
    if said.is_set():
        print(f"zofed: {text}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
