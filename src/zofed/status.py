"""Status lines for the long steps of a run (loading the model, converting GGUF, evaluating, generating).

Round progress is tracking.py's; this is for the minutes before and after the rounds, which would
otherwise pass in silence. Imports only rich, so llm/ and data/ may use it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

# A phase shorter than this prints nothing when piped: a fast failure (bad input) stays one line.
PHASE_LINE_AFTER_S = 1.0
_spinner = None  # the terminal's spinner while a phase runs (rich shows one live display at a time)


@contextmanager
def phase(text: str, live: bool = True) -> Iterator[None]:
    """Say what a long step is doing while it runs (loading the model, evaluating, generating).

    On a terminal, a transient spinner; otherwise (files, pipes, batch logs) one plain line on stderr
    once the phase has lasted PHASE_LINE_AFTER_S, and its duration when it ends.
    """
    global _spinner
    console = Console(stderr=True)
    if console.is_terminal and live:
        if _spinner is not None:  # a phase inside a phase (GGUF conversion while loading): one spinner, its text
            outer = _spinner.status
            _spinner.update(f"{text}...")
            try:
                yield
            finally:
                _spinner.update(outer)
            return
        with console.status(f"{text}...") as _spinner:
            try:
                yield
            finally:
                _spinner = None
        return
    started = time.perf_counter()
    said = threading.Event()

    def say() -> None:
        said.set()
        print(f"zofed: {text}...", file=sys.stderr, flush=True)

    timer = threading.Timer(PHASE_LINE_AFTER_S, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if said.is_set():
        print(f"zofed: {text}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
