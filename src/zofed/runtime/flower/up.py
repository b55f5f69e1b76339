"""`zofed flower up --nodes N`: a whole Flower federation on this machine for trying runtime=flower.

A SuperLink and N SuperNodes on 127.0.0.1, with TLS (a throwaway CA and server certificate, made
with openssl) and SuperNode authentication (a key pair per node, registered with the SuperLink),
started through `zofed flower` (loopback.py) with everything under one folder: certificates,
keys, each node's state-dir, logs, and a Flower connection file for `flwr run`. It prints how to
submit a run and how to stop the federation, then waits; Ctrl-C or SIGTERM stops every process it
started (SuperExecs, ClientApps and warm workers included). A process that exits on its own
stops the rest too, with its log's tail.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from zofed.errors import ZofedError
from zofed.runtime.flower.deployment import (flwr_connection, register_supernode, threads_per_node,
                                             write_supernode_keys)
from zofed.runtime.flower.loopback import LoopbackFederation, free_port, self_signed_certificates

JOIN_TIMEOUT_S = 300.0  # a SuperNode's start and first contact with the SuperLink on a loaded 2-core machine
JOINED = "SuperNode ID:"  # what a SuperNode logs once the SuperLink accepted it


class _Stop(Exception):
    """Raised by the SIGINT/SIGTERM handler to leave the wait."""


def flower_up(nodes: int, folder: Path | None = None, port: int | None = None, node_args: tuple[str, ...] = ()) -> int:
    """Start the federation, print how to use it, wait for a signal, stop everything; the exit code."""
    if nodes < 1:
        raise ZofedError(f"--nodes {nodes}: give at least 1 SuperNode")
    if shutil.which("openssl") is None:
        raise ZofedError("`zofed flower up` makes its TLS certificates with openssl, which is not installed; install it")
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="zofed-federation-"))
    elif folder.exists() and any(folder.iterdir()):
        raise ZofedError(f"'{folder}' is not empty; give --dir a new or empty folder (it gets keys, certificates and logs)")
    folder = folder.resolve()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stop)
    federation = LoopbackFederation(folder)
    try:
        if port is not None:
            federation.superlink_port, federation.superlink = port, f"127.0.0.1:{port}"
        certificates = self_signed_certificates(folder / "certificates")
        ca = str(certificates["ca.crt"])
        federation.start_superlink("--ssl-certfile", str(certificates["server.crt"]), "--ssl-keyfile",
                                   str(certificates["server.key"]), "--ssl-ca-certfile", ca, "--enable-supernode-auth")
        supernodes = []
        # the nodes share this machine's cores (a --threads in node_args wins)
        threads = () if "--threads" in node_args else ("--threads", str(threads_per_node(nodes)))
        for partition in range(nodes):
            private, public = write_supernode_keys(folder / "keys", f"node-{partition}")
            register_supernode(str(public), federation.superlink, ca)
            supernodes.append(federation.zofed(
                "supernode", "--partition-id", str(partition), "--superlink", federation.superlink, "--port", str(free_port()),
                "--root-certificates", ca, "--auth-private-key", str(private), "--state-dir", str(folder / f"node-{partition}"),
                *threads, *node_args, log=f"supernode-{partition}.log"))
        _wait_until_joined(federation, folder, nodes)
        flwr_home = folder / "flwr"
        flwr_home.mkdir()
        (flwr_home / "config.toml").write_text(flwr_connection(federation.superlink, ca))
        print(instructions(federation.superlink, ca, nodes, flwr_home, folder), flush=True)
        while True:
            for process in federation.processes:
                if process.poll() is not None:
                    name = Path(process.args[-1]).name if isinstance(process.args, list) else "a process"
                    print(f"zofed flower up: a process exited with {process.returncode} ({name}); stopping the federation. "
                          f"Logs: {folder}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except _Stop:
        print("zofed flower up: stopping the SuperLink and SuperNodes", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave half of it running
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        federation.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_stop(signum, frame) -> None:
    raise _Stop()


def _wait_until_joined(federation: LoopbackFederation, folder: Path, nodes: int) -> None:
    """Every SuperNode accepted by the SuperLink (TLS and its key checked), or an error naming the one that was not."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    waiting = set(range(nodes))
    while waiting:
        for partition in sorted(waiting):
            log = folder / f"supernode-{partition}.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            if JOINED in text:
                waiting.discard(partition)
            elif federation.processes[1 + partition].poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(text.splitlines()[-5:])
                raise ZofedError(f"SuperNode {partition} did not join the SuperLink; its log ({log}) ends:\n{tail}")
        time.sleep(0.2)


def instructions(superlink: str, ca: str, nodes: int, flwr_home: Path, folder: Path) -> str:
    return f"""zofed flower up: a SuperLink at {superlink} and {nodes} SuperNode{'s' if nodes > 1 else ''} (partitions 0..{nodes - 1}), TLS and SuperNode authentication on.
Files (certificates, keys, node state, logs): {folder}

Submit a run (clients={nodes}):
  zofed run configs/quickstart.yaml runtime=flower superlink={superlink} clients={nodes} flower.root_certificates={ca}
or with Flower's own CLI, from the repository root:
  FLWR_HOME={flwr_home} flwr run . zofed --stream --run-config 'config="configs/quickstart.yaml" overrides="clients={nodes}"'

Stop: Ctrl-C here (or kill -TERM {os.getpid()}); every process started here stops with it.
zofed flower up: ready"""
