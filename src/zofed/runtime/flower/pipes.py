"""Reading a child process's output without ever blocking on it, and stopping a child's whole group.

A pipe read in the caller's thread blocks for as long as any process holds its write end open: a
child's own children (Flower's SuperExecs, ClientApps, warm workers) inherit it and may outlive the
child by minutes, and a child that is alive but silent blocks a `read()` forever. So a thread
drains each pipe into memory and the caller only ever waits on that thread, with a timeout. A
child started with `start_new_session=True` leads its own process group: `kill_group` ends it and
everything in the group at once, whatever state it is in.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO


class PipeLines:
    """The lines a child writes to one pipe, collected by a daemon thread as they come."""

    def __init__(self, pipe: IO[str], echo: Callable[[str], None] | None = None) -> None:
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._drain, args=(pipe, echo), daemon=True)
        self._thread.start()

    def _drain(self, pipe: IO[str], echo: Callable[[str], None] | None) -> None:
        try:
            for line in pipe:
                if echo is not None:
                    echo(line)
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        except (OSError, ValueError):
            pass  # the pipe was closed under us: what came is kept
        finally:
            pipe.close()  # here, not by the caller: closing a pipe another thread reads waits for that read
            with self._changed:
                self._closed = True
                self._changed.notify_all()

    def text(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, marker: str, timeout_s: float, process: subprocess.Popen | None = None) -> bool:
        """Whether `marker` appeared within `timeout_s` (False at once when the pipe closes or `process` exits without it)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not any(marker in line for line in self._lines):
                left = deadline - time.monotonic()
                if left <= 0 or self._closed or (process is not None and process.poll() is not None):
                    return any(marker in line for line in self._lines)
                self._changed.wait(min(left, 0.5))  # wakes on each line; the poll above catches a silent exit
            return True

    def wait_closed(self, timeout_s: float) -> bool:
        """Whether the pipe reached its end within `timeout_s` (a grandchild may hold it open for longer: then False)."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group `process` leads (started with start_new_session=True), and reap `process`."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass  # unkillable (a process stuck in the kernel): nothing more we can do
