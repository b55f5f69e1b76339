"""A child's output is read without blocking on its pipe: a grandchild holding the pipe, or a silent child, never
holds the reader past its timeout, and kill_group ends the whole group."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from zofed.runtime.flower import deployment
from zofed.runtime.flower.pipes import PipeLines, kill_group

# The child starts a grandchild that inherits stdout and outlives it, prints the grandchild's pid, and waits.
HOLDER = "import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); " \
         "print(g.pid, flush=True); print('ready', flush=True); time.sleep(120)"


def test_marker_found_while_a_grandchild_holds_the_pipe_and_kill_group_ends_both():
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, start_new_session=True)
    lines = PipeLines(child.stdout)
    try:
        assert lines.wait_for("ready", 120, process=child)
        grandchild = psutil.Process(int(lines.text().split()[0]))
        assert not lines.wait_for("never written", 0.3, process=child)  # the timeout, not a blocked read
        assert not lines.wait_closed(0.1)  # both still hold the pipe
    finally:
        kill_group(child)
    assert child.returncode is not None
    psutil.wait_procs([grandchild], timeout=30)
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
    assert lines.wait_closed(30)  # every writer gone: the reader ends


def test_a_child_that_exits_without_the_marker_is_seen_at_once():
    child = subprocess.Popen([sys.executable, "-c", "print('bye')"], stdout=subprocess.PIPE, text=True)
    lines = PipeLines(child.stdout)
    started = time.monotonic()
    assert not lines.wait_for("ready", 600, process=child)
    assert time.monotonic() - started < 300 and lines.text() == "bye\n"
    child.wait()


def test_flwr_run_output_read_to_its_exit_though_a_process_it_started_keeps_the_pipe(monkeypatch, capsys):
    monkeypatch.setattr(deployment, "PIPE_DRAIN_S", 0.5)
    code = ("import subprocess, sys; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "print('pid', g.pid); print('zofed summary: {\"rounds\": 2}', flush=True)")
    returncode, summary = deployment._stream_for_summary([sys.executable, "-c", code], dict(os.environ))
    echoed = capsys.readouterr().err
    holder = psutil.Process(int(echoed.split()[1]))  # the stand-in for an auto-started SuperLink
    assert holder.is_running()  # returned while it still holds the pipe, not when it let go
    holder.kill()
    assert returncode == 0 and summary == {"rounds": 2} and "zofed summary" in echoed
