"""`zofed flower up`: a TLS federation with authenticated SuperNodes on loopback, and SIGTERM stops all of it."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from zofed.cli import main
from zofed.runtime.flower.loopback import SRC, free_port

from .conftest import running

pytest.importorskip("flwr")


def read_until(process: subprocess.Popen, marker: str, timeout_s: float) -> str:
    """The process's stdout up to the line holding `marker` (a failure with what it wrote, if it never comes)."""
    text, deadline = "", time.monotonic() + timeout_s
    while marker not in text:
        left = deadline - time.monotonic()
        assert left > 0 and process.poll() is None, f"no {marker!r}; stdout: {text}; stderr: {process.stderr.read()[-2000:]}"
        if select.select([process.stdout], [], [], min(left, 1.0))[0]:
            text += process.stdout.readline()
    return text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for self-signed certificates")
def test_up_starts_a_superlink_and_authenticated_supernodes_and_sigterm_stops_every_process(tmp_path):
    folder, port = tmp_path / "federation", free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    up = subprocess.Popen([sys.executable, "-m", "zofed.cli", "flower", "up", "--nodes", "2", "--dir", str(folder), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        printed = read_until(up, "zofed flower up: ready", timeout_s=180)
        started = psutil.Process(up.pid).children(recursive=True)
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
        assert up.wait(timeout=60) == 0
        psutil.wait_procs(started, timeout=10)
        assert not [process for process in started if running(process)], "a process of `zofed flower up` outlived it"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_up_refuses_a_folder_in_use_and_no_nodes(tmp_path, capsys):
    (tmp_path / "old.log").write_text("x")
    assert main(["flower", "up", "--nodes", "2", "--dir", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["flower", "up", "--nodes", "0", "--dir", str(tmp_path / "new")]) == 2
    assert "at least 1" in capsys.readouterr().err
