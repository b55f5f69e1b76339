"""`zofed flower up`: a TLS federation with authenticated SuperNodes on loopback, and SIGTERM stops all of it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import psutil
import pytest

from zofed.cli import main
from zofed.runtime.flower.loopback import SRC, family_of, free_port, stop_processes
from zofed.runtime.flower.pipes import PipeLines, kill_group

from .conftest import running

pytest.importorskip("flwr")


READY_TIMEOUT_S = 600  # a SuperLink, two SuperNodes and two `flwr supernode register` on a loaded 2-core machine


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for self-signed certificates")
def test_up_starts_a_superlink_and_authenticated_supernodes_and_sigterm_stops_every_process(tmp_path):
    folder, port = tmp_path / "federation", free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    # Its own process group, so a failure below can kill it whatever it is doing; its output is read by threads, so
    # nothing here blocks on a pipe that a SuperLink or SuperNode it started may hold open.
    up = subprocess.Popen([sys.executable, "-m", "zofed.cli", "flower", "up", "--nodes", "2", "--dir", str(folder), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
                          cwd=tmp_path, start_new_session=True)
    stdout, stderr = PipeLines(up.stdout), PipeLines(up.stderr)
    started: list[psutil.Process] = []
    try:
        ready = stdout.wait_for("zofed flower up: ready", READY_TIMEOUT_S, process=up)
        assert ready, f"not ready (exit {up.poll()}); stdout: {stdout.text()[-2000:]}; stderr: {stderr.text()[-2000:]}"
        printed = stdout.text()
        started = family_of(up)[1:]
        commands = [" ".join(process.cmdline()) for process in started if running(process)]
        [superlink] = [command for command in commands if "flower-superlink" in command]
        supernodes = [command for command in commands if "flower-supernode" in command]
        assert len(supernodes) == 2
        assert "--enable-supernode-auth" in superlink and "--ssl-certfile" in superlink and f"--port {port}" in superlink
        assert all("--auth-supernode-private-key" in node and "--root-certificates" in node for node in supernodes)
        ca = folder / "certificates" / "ca.crt"
        assert f"superlink=127.0.0.1:{port}" in printed and f"flower.root_certificates={ca}" in printed
        assert "flwr run . zofed" in printed and f"kill -TERM {up.pid}" in printed
        assert (folder / "flwr" / "config.toml").read_text().count(str(ca)) == 1
        assert all("SuperNode ID:" in (folder / f"supernode-{k}.log").read_text() for k in (0, 1))  # accepted: key registered

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=120) == 0, stderr.text()[-2000:]
        psutil.wait_procs(started, timeout=30)
        assert not [process for process in started if running(process)], "a process of `zofed flower up` outlived it"
    finally:
        leftovers = started or family_of(up)[1:]  # found before `up` goes: its children are in sessions of their own
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)  # its own clean stop first, then force
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kill_group(up)
        stop_processes([process for process in leftovers if running(process)], timeout_s=5)


def test_up_refuses_a_folder_in_use_and_no_nodes(tmp_path, capsys):
    (tmp_path / "old.log").write_text("x")
    assert main(["flower", "up", "--nodes", "2", "--dir", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["flower", "up", "--nodes", "0", "--dir", str(tmp_path / "new")]) == 2
    assert "at least 1" in capsys.readouterr().err
