"""A whole Flower federation on this machine, for tests, benchmarks and trying runtime=flower.

Every process is started here and stopped here, with the processes Flower itself started
(SuperExec, ServerApp and ClientApp processes, which Flower detaches from their parents).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

# Our own sources first, so the children import the same zofed as this process.
SRC = str(Path(__file__).resolve().parents[3])
# A SuperLink's or SuperNode's start (Python and Flower imports) on a loaded 2-core machine: seconds when
# idle, a minute or more when other test processes compete for the cores.
START_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port} after {timeout_s} s")


def stop_processes(processes: list[psutil.Process], timeout_s: float = 10.0) -> None:
    """SIGTERM each process, then SIGKILL those still alive after `timeout_s`, and wait for them to die."""
    for member in processes:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)  # SIGKILL is not instant: gone (or a zombie) when this returns


class LoopbackFederation:
    """A SuperLink and SuperNodes on 127.0.0.1 (free ports), started through `zofed flower` with
    their logs under `root`; `stop_all` ends them and every process they started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "FLWR_HOME": str(root / "flwr-home"), "HF_HUB_OFFLINE": "1",
                    "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.processes: list[subprocess.Popen] = []
        self.superlink_port = free_port()
        self.superlink = f"127.0.0.1:{self.superlink_port}"
        self.superlink_process: subprocess.Popen | None = None

    def zofed(self, *args: str, log: str) -> subprocess.Popen:
        # No SIGINT/SIGTERM between the start and the bookkeeping: a process started is always one stop_all stops.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            with open(self.root / log, "wb") as output:
                # A session of its own: a terminal's Ctrl-C reaches only our process, which stops them all in order.
                process = subprocess.Popen([sys.executable, "-m", "zofed.cli", "flower", *args], env=self.env,
                                           stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
            self.processes.append(process)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return process

    def start_superlink(self, *tls: str) -> None:
        self.superlink_process = self.zofed("superlink", "--port", str(self.superlink_port), *tls, log="superlink.log")
        wait_for_port(self.superlink_port, self.superlink_process)

    def start_supernode(self, partition_id: int, *extra: str, log: str | None = None) -> subprocess.Popen:
        return self.start_supernodes([partition_id], *extra, log=log)[partition_id]

    def start_supernodes(self, partition_ids, *extra: str, log: str | None = None) -> dict[int, subprocess.Popen]:
        """SuperNodes for `partition_ids`, all started before waiting for any (their starts overlap), each
        logging to `supernode-K.log` (or `log`, a format with {partition})."""
        started = {}
        for partition_id in partition_ids:
            port = free_port()
            name = (log or "supernode-{partition}.log").format(partition=partition_id)
            started[partition_id] = (port, self.zofed("supernode", "--partition-id", str(partition_id), "--superlink",
                                                      self.superlink, "--port", str(port), *extra, log=name))
        for port, process in started.values():
            wait_for_port(port, process)
        return {partition_id: process for partition_id, (_, process) in started.items()}

    def stop(self, process: subprocess.Popen) -> None:
        """Stop a process and every process it started (Flower detaches its SuperExec children), all at once."""
        stop_processes(family_of(process))
        process.wait()  # its exit status, for Popen (stop_processes waited for it)

    def crash(self, process: subprocess.Popen) -> None:
        """SIGKILL a process and every process it started, as when its machine dies: nothing cleans up."""
        family = family_of(process)
        for member in family:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        process.wait()
        psutil.wait_procs(family, timeout=10)

    def descendants(self, process: subprocess.Popen, command: str) -> list[psutil.Process]:
        """The processes under `process` whose command line mentions `command` (e.g. flwr-serverapp)."""
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for child in children:
            try:
                if any(command in part for part in child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                pass
        return found

    def stop_all(self) -> None:
        """Stop every process started here and every process they started, all at once: each takes seconds to exit
        (a SuperNode ~1 s, its SuperExec ~3 s), which one after another made a deployment ~10 s to stop. Then SIGKILL
        strays: a process a dying SuperExec launched after its family was listed (its parent gone, no tree leads
        to it), found by this federation's own FLWR_HOME in its environment."""
        stop_processes([member for process in self.processes for member in family_of(process)])
        for process in self.processes:
            process.wait()
        for _ in range(3):
            strays = self.strays()
            if not strays:
                break
            stop_processes(strays, timeout_s=0)

    def strays(self) -> list[psutil.Process]:
        """Running processes with this federation's environment (its FLWR_HOME), other than this one."""
        found = []
        marker = f"FLWR_HOME={self.env['FLWR_HOME']}".encode()
        for candidate in psutil.process_iter():
            if candidate.pid == os.getpid():
                continue
            try:
                with open(f"/proc/{candidate.pid}/environ", "rb") as environ:
                    if marker in environ.read().split(b"\0") and candidate.status() != psutil.STATUS_ZOMBIE:
                        found.append(candidate)
            except (OSError, psutil.NoSuchProcess):
                continue  # not ours to read, gone, or no /proc (not Linux): nothing to sweep
        return found


def family_of(process: subprocess.Popen) -> list[psutil.Process]:
    """The process and every process under it, found while it lives (Flower detaches its SuperExec children),
    and a SuperNode's warm worker (worker.py: in a session of its own, it outlives the ClientApp that started it)."""
    if process.poll() is not None:
        return []  # exited and reaped: its pid may be another process's now
    try:
        parent = psutil.Process(process.pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return family + workers_of({member.pid for member in family})


def workers_of(pids: set[int]) -> list[psutil.Process]:
    """The warm workers serving the SuperNodes among `pids` (each names its SuperNode on its command line)."""
    found = []
    for candidate in psutil.process_iter(["cmdline"]):
        command = candidate.info["cmdline"] or []
        if "zofed.runtime.flower.worker" in command and "--supernode-pid" in command:
            watched = command[command.index("--supernode-pid") + 1]
            if watched.isdigit() and int(watched) in pids:
                found.append(candidate)
    return found


def self_signed_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed (needs the openssl command)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in ("ca.crt", "ca.key", "server.crt", "server.key", "server.csr", "ext.cnf")}
    paths["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", paths["ca.key"], "-out", paths["ca.crt"],
         "-days", "1", "-subj", "/CN=zofed-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", paths["server.key"], "-out", paths["server.csr"],
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", paths["server.csr"], "-CA", paths["ca.crt"], "-CAkey", paths["ca.key"],
         "-CAcreateserial", "-out", paths["server.crt"], "-days", "1", "-extfile", paths["ext.cnf"]],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True, timeout=120)
    return paths
