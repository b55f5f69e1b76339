"""Bytes the SuperLink actually moved over TCP, next to the ledger's codec bytes.

What is measured: the kernel's per-socket TCP counters (`ss -tin`: bytes_acked = payload bytes
sent and acknowledged, bytes_received = payload bytes received) of the SuperLink's accepted
connections, sampled every `interval_s` by a thread in the ServerApp process (which runs on the
SuperLink's machine, as a child of it). That is HTTP(S) with Flower's protobuf inside, TLS
included when on, TCP/IP headers excluded. Each connection is put by the process at its other
end: this ServerApp (`serverapp`: the server logic talking to its own SuperLink), the SuperLink's
own helper processes (`superexec`), or anything else (`nodes`: the SuperNodes, plus `flwr run`'s
log stream). Not /proc/PID/io, which also counts log and file writes.

Limits, stated: a connection opened and closed between two samples is missed, and one closed
within a sample interval loses its last interval's bytes. Flower's HTTP clients keep their
connections alive, so this is small; compare `nodes` with the `flower_bytes_*` lower bound.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

import psutil

_COUNTER = re.compile(r"\b(bytes_acked|bytes_received):(\d+)")
_PID = re.compile(r"pid=(\d+),")


@dataclass
class _Connection:
    first: tuple[int, int]
    last: tuple[int, int]
    peer: str  # serverapp | superexec | nodes

KINDS = ("nodes", "serverapp", "superexec")


@dataclass
class SocketMeter:
    pid: int
    port: int
    interval_s: float = 0.2
    connections: dict[tuple[str, str], _Connection] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        self.sample()  # connections alive now count from here on
        self._started = True
        self._thread = threading.Thread(target=self._run, name="zofed-socket-meter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        output = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True, text=True, check=False).stdout
        lines = output.splitlines()
        sockets = []  # (local, peer, owner pid, (acked, received))
        for head, info in zip(lines[::2], lines[1::2]):
            columns, owner = head.split(), _PID.search(head)
            counters = dict(_COUNTER.findall(info))
            sockets.append((columns[2], columns[3], int(owner.group(1)) if owner else None,
                            (int(counters.get("bytes_acked", 0)), int(counters.get("bytes_received", 0)))))
        owner_of = {local: pid for local, _, pid, _ in sockets}
        try:
            helpers = {child.pid for child in psutil.Process(self.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            helpers = set()
        with self._lock:
            for local, peer, pid, now in sockets:
                if pid != self.pid or not local.endswith(f":{self.port}"):
                    continue
                known = self.connections.get((local, peer))
                if known is not None:
                    known.last = now
                    continue
                other = owner_of.get(peer)
                kind = "serverapp" if other == os.getpid() else "superexec" if other in helpers else "nodes"
                # Opened before the meter started: count from now; opened since: count from zero.
                self.connections[(local, peer)] = _Connection(now if not self._started else (0, 0), now, kind)

    def totals(self) -> dict[str, int]:
        with self._lock:
            result = {f"{kind}_{way}": 0 for kind in KINDS for way in ("sent", "received")}
            for connection in self.connections.values():
                result[f"{connection.peer}_sent"] += connection.last[0] - connection.first[0]
                result[f"{connection.peer}_received"] += connection.last[1] - connection.first[1]
            return result


def superlink_meter() -> SocketMeter | None:
    """A meter on the SuperLink this ServerApp runs under, or None (simulation, or `ss` missing)."""
    if shutil.which("ss") is None:
        return None
    for ancestor in psutil.Process(os.getpid()).parents():
        try:
            if not any("flower-superlink" in part for part in ancestor.cmdline()):
                continue
            ports = [c.laddr.port for c in ancestor.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            return None
        return SocketMeter(ancestor.pid, ports[0]) if len(ports) == 1 else None
    return None
