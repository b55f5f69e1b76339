"""A SuperNode's warm worker: one long-lived process per node that keeps the imports, the loaded
model and the tokenised data across the messages of a run.

Flower 1.41 starts a fresh ClientApp process for every message and none of its isolation modes
keeps one alive (docs/deployment.md, "Warm clients"), so a cold ClientApp imports torch and
transformers and loads the model every round. With node config `worker-idle-s` (set by `zofed
flower supernode` unless `--cold`), the short-lived ClientApp hands each training message to this
worker instead and returns its answer; Flower stays the transport and the authentication, and the
server screens the reply as from any client.

- Where: a node-private directory (mode 0700, owned by this user, checked; a symlink or another
  owner's directory is refused) under node config `worker-dir` or the system temp directory, one
  per SuperNode (its node id and process id): `worker.sock` (Unix socket), `authkey` (0600; both
  ends prove they hold it, an HMAC challenge each way), `pid`, `lock`, `worker.log`.
- What crosses: one JSON header and the raw bytes it names (the downlink; the kept model when the
  node keeps it in its Context state), never pickles. The reply: the uplink bytes, the client's
  measurements, and the kept model when the round changed it.
- The cache: the worker's one experiment is keyed by (run id, the node's config as parsed, the
  partition, the model's and data's files: path, size, mtime): any change builds a fresh one, so
  a changed model, config or run never reuses a stale entry. Bit-identical to the cold path
  (tested), as a simulation's Ray worker reuses its experiment across rounds.
- Failures: one message at a time (`lock`). A ClientApp that finds no worker (none yet, crashed,
  exited idle, or one that does not answer its handshake: hung) starts one; one that dies or errs
  mid-message fails that message (the server drops the client for the round) and the next message
  starts a fresh one. The ClientApp waits at most `flower.timeout_s` for an answer (the server has
  dropped the client by then), then kills the worker (without a timeout, the message's TTL: Flower
  discards a later reply). The worker exits after `worker-idle-s` without a message, or within a
  second of its SuperNode's exit.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, MutableMapping
from multiprocessing.connection import Connection
from pathlib import Path

import psutil

from flwr.app import Context, Message

from zofed.errors import ZofedError
from zofed.runtime.flower.records import RUN, ContextKept, pack, partition_id, unpack

HANDSHAKE_TIMEOUT_S = 30.0  # a worker waits for messages in accept(): it answers at once unless hung
START_TIMEOUT_S = 300.0  # a worker's start: Python, torch and transformers imports on a busy machine
NODE_CHECK_S = 1.0  # how often an idle worker looks for its SuperNode and the idle time
SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path (Linux: 108 with the final NUL; macOS: 104, checked by bind)
NODE_KEYS = ("model", "data-path", "state-dir")  # node config the worker's round needs


# ---------------------------------------------------------------- the ClientApp's side (no torch)


def train(message: Message, context: Context, process_costs: MutableMapping[str, float]) -> Message:
    """One training message through the node's worker, started here if it is not running."""
    started = time.perf_counter()
    if RUN not in context.state:
        raise ZofedError("this SuperNode has not received the run's config; the server sends it before round 1")
    run_config_json = str(context.state.config_records[RUN]["config"])
    kept = None if "state-dir" in context.node_config else ContextKept(context)
    header = {
        "run_id": context.run_id, "partition": partition_id(context), "config": run_config_json,
        "node": {key: str(context.node_config[key]) for key in NODE_KEYS if key in context.node_config},
    }
    blobs = [unpack(message.content)]
    if kept is not None and kept.data is not None:
        blobs.append(kept.data)
    header["kept_in_message"] = kept is not None
    # The server's flower.timeout_s (it has dropped the client by then), else the message's TTL (Flower drops the
    # reply after it): a hung worker never holds the node for longer.
    welcome = context.state.config_records[RUN]
    timeout_s = float(welcome["timeout_s"]) if "timeout_s" in welcome else float(message.metadata.ttl)
    folder = node_folder(context)
    with _locked(folder):
        connection, worker_start_s = connect_or_start(folder, float(context.node_config["worker-idle-s"]))
        answer, returned = exchange(connection, folder, header, blobs, float(timeout_s))
    uplink = returned[0]
    if kept is not None and answer["kept"] != "unchanged":
        kept.put(returned[1] if answer["kept"] == "kept" else None)
    # This ClientApp process's start and imports (every message), the worker's start (when this message started one)
    runtime = {**answer["runtime"], **process_costs, "worker_start_s": worker_start_s}
    process_costs.clear()
    runtime["handoff_s"] = max(0.0, time.perf_counter() - started - worker_start_s - answer["served_s"])
    return Message(pack(uplink, runtime), reply_to=message)


def node_folder(context: Context) -> Path:
    """This SuperNode's private folder (see the module docstring), created and checked."""
    base = context.node_config.get("worker-dir")
    base = Path(str(base)) if base else Path(tempfile.gettempdir()) / f"zofed-workers-{os.getuid()}"
    base.parent.mkdir(parents=True, exist_ok=True)
    private_folder(base)
    folder = base / f"node-{context.node_id}-{supernode_pid()}"
    if len(str(folder / "worker.sock").encode()) > SOCKET_PATH_MAX:
        raise ZofedError(f"the warm worker's socket path under '{base}' is longer than a Unix socket allows "
                         f"({SOCKET_PATH_MAX} bytes); give the SuperNode a shorter --worker-dir")
    return private_folder(folder)


def private_folder(path: Path) -> Path:
    """`path` as a directory only this user can enter: made with mode 0700, or refused if anything else is there."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise ZofedError(f"'{path}' is not a directory private to this user (mode 0700, owned by uid {os.getuid()}); "
                         "remove it, or give the SuperNode another --worker-dir")
    return path


def supernode_pid() -> int:
    """The SuperNode this ClientApp serves (ClientApp < SuperExec < SuperNode), or the ClientApp's parent
    (`--isolation process`: the SuperExec runs apart from the SuperNode)."""
    me = psutil.Process()
    for ancestor in me.parents():
        try:
            if any("flower-supernode" in part for part in ancestor.cmdline()[:2]):
                return ancestor.pid
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return me.ppid()


class _locked:
    """The node's worker serves one message at a time: a ClientApp holds `lock` from connecting to its answer."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "lock"

    def __enter__(self) -> None:
        self.descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self.descriptor, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        os.close(self.descriptor)  # releases the lock


def connect_or_start(folder: Path, idle_s: float) -> tuple[Connection, float]:
    """A connection to the node's worker, and the seconds spent starting one (0 when it was running)."""
    connection = _connect(folder)
    if connection is not None:
        return connection, 0.0
    started = time.perf_counter()
    stop_worker(folder)  # a worker that does not answer (hung, or exiting): never two
    key_path = folder / "authkey"
    key_path.unlink(missing_ok=True)
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as output:
        output.write(secrets.token_bytes(32))
    (folder / "worker.sock").unlink(missing_ok=True)
    with open(folder / "worker.log", "ab") as log:
        # Its own session: it outlives this ClientApp (which exits after the message) and a terminal's Ctrl-C;
        # it watches the SuperNode instead.
        process = subprocess.Popen(
            [sys.executable, "-m", "zofed.runtime.flower.worker", str(folder), "--supernode-pid", str(supernode_pid()),
             "--idle-s", str(idle_s)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ZofedError(f"the node's warm worker exited with {process.returncode} while starting; see "
                             f"{folder / 'worker.log'}")
        connection = _connect(folder)
        if connection is not None:
            return connection, time.perf_counter() - started
        time.sleep(0.05)
    process.kill()
    raise ZofedError(f"the node's warm worker did not start within {START_TIMEOUT_S:.0f} s; see {folder / 'worker.log'}")


def _connect(folder: Path) -> Connection | None:
    """The running worker's connection, or None where none answers (none yet, crashed, exiting idle, hung)."""
    try:
        key = (folder / "authkey").read_bytes()
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.connect(str(folder / "worker.sock"))
    except OSError:
        return None
    connection = Connection(peer.detach())
    try:
        if prove(connection, key, b"clientapp", b"worker"):
            return connection
    except (EOFError, OSError):
        pass
    connection.close()
    return None


def prove(connection: Connection, key: bytes, me: bytes, peer: bytes) -> bool:
    """Both ends show they hold the node's authkey: each answers the other's random challenge with an HMAC
    naming its side (so an answer cannot be reflected back), within HANDSHAKE_TIMEOUT_S (a hung worker fails)."""
    challenge = secrets.token_bytes(32)
    connection.send_bytes(challenge)
    if not connection.poll(HANDSHAKE_TIMEOUT_S):
        return False
    asked = connection.recv_bytes(64)
    connection.send_bytes(hmac.digest(key, me + asked, "sha256"))
    if not connection.poll(HANDSHAKE_TIMEOUT_S):
        return False
    return hmac.compare_digest(connection.recv_bytes(64), hmac.digest(key, peer + challenge, "sha256"))


def exchange(connection: Connection, folder: Path, header: dict, blobs: list[bytes],
             timeout_s: float) -> tuple[dict, list[bytes]]:
    """Send one request, wait for its answer at most `timeout_s`; a dead, erring or late worker fails the message."""
    try:
        with connection:
            connection.send_bytes(json.dumps({**header, "blobs": len(blobs)}).encode())
            for blob in blobs:
                connection.send_bytes(blob)
            if not connection.poll(timeout_s):
                stop_worker(folder)
                raise ZofedError(f"the node's warm worker did not answer within {timeout_s:g} s (flower.timeout_s, or the message's TTL); "
                                 "stopped it, the next message starts a fresh one")
            answer = json.loads(connection.recv_bytes())
            returned = [connection.recv_bytes() for _ in range(answer.get("blobs", 0))]
    except (EOFError, ConnectionError, OSError) as error:
        raise ZofedError(f"the node's warm worker ended mid-message ({type(error).__name__}); the next message starts "
                         f"a fresh one; see {folder / 'worker.log'}") from None
    if "error" in answer:
        raise ZofedError(f"the node's warm worker: {answer['error']}")
    return answer, returned


def stop_worker(folder: Path) -> None:
    """SIGKILL the folder's worker if one runs (its pid file names it, and it is ours: same command)."""
    try:
        process = psutil.Process(int((folder / "pid").read_text()))
        if "zofed.runtime.flower.worker" in process.cmdline() and str(folder) in process.cmdline():
            process.kill()
            process.wait(10)
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess, psutil.TimeoutExpired):
        pass


# ---------------------------------------------------------------- the worker's side


def cache_key(run_id: int, partition: int, config_json: str, node: Mapping[str, str]) -> str:
    """What must match for the worker's experiment to serve a message: the run, the partition, the
    node's config and the files of its model and data (a file rewritten in place changes size or mtime)."""
    config = json.loads(config_json)
    files = {}
    for label, path in (("model", node.get("model", config.get("model"))),
                        ("data", node.get("data-path", (config.get("data") or {}).get("path")))):
        files[label] = file_stamps(Path(path)) if path and Path(path).exists() else None
    return json.dumps({"run_id": run_id, "partition": partition, "files": files}, sort_keys=True)


def file_stamps(path: Path) -> str:
    """SHA-256 of (relative path, size, mtime) of every file at `path` (a file or a directory tree)."""
    digest = hashlib.sha256()
    for file in sorted([path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())):
        info = file.stat()
        digest.update(f"{file.relative_to(path) if file != path else file.name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def serve(folder: Path, supernode: int, idle_s: float) -> None:
    """Answer messages one at a time until idle for `idle_s` or the SuperNode is gone."""
    from zofed.runtime.flower import client_train  # torch, transformers, zofed: once for the worker's life

    client_train.unreported_costs({})  # its imports are in the ClientApp's worker_start_s, not a round's imports_s

    key = (folder / "authkey").read_bytes()
    watched = psutil.Process(supernode)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "worker.sock"))  # the folder is private: so is the socket
    listener.listen(4)
    listener.settimeout(NODE_CHECK_S)
    (folder / "pid").write_text(str(os.getpid()))
    process_costs: dict[str, float] = {}
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s and watched.is_running():
            try:
                accepted, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.settimeout(None)
            with Connection(accepted.detach()) as connection:
                try:
                    if not prove(connection, key, b"worker", b"clientapp"):
                        continue  # a peer without the key: nothing to answer
                    request = json.loads(connection.recv_bytes())
                    blobs = [connection.recv_bytes() for _ in range(request["blobs"])]
                except (EOFError, OSError, ValueError, KeyError):
                    continue  # a peer without the key, or one that left: nothing to answer
                answer, returned = handle(client_train, request, blobs, process_costs)
                try:
                    connection.send_bytes(json.dumps({**answer, "blobs": len(returned)}).encode())
                    for blob in returned:
                        connection.send_bytes(blob)
                except OSError:
                    pass  # the ClientApp gave up (timeout): its message failed
            last = time.monotonic()
    finally:
        listener.close()
        (folder / "worker.sock").unlink(missing_ok=True)


def handle(client_train, request: dict, blobs: list[bytes], process_costs: dict[str, float]) -> tuple[dict, list[bytes]]:
    """One message's round on the cached experiment; an error is answered, never raised."""
    started = time.perf_counter()
    try:
        config = client_train.config_for_node(request["config"], request["node"], request["partition"])
        if request["kept_in_message"]:
            kept = client_train.TrackedKept(blobs[1] if len(blobs) > 1 else None)
        else:
            kept = client_train.kept_file(request["node"]["state-dir"], config, request["partition"])
        key = cache_key(request["run_id"], request["partition"], request["config"], request["node"])
        uplink, runtime = client_train.serve_round(config, request["partition"], blobs[0], kept, process_costs, key)
    except ZofedError as error:
        return {"error": str(error)}, []
    except Exception as error:  # noqa: BLE001 - answered to the ClientApp; the experiment may be half-changed: drop it
        client_train._CACHE.clear()
        return {"error": f"{type(error).__name__}: {error}"}, []
    returned, held = [uplink], "unchanged"
    if isinstance(kept, client_train.TrackedKept) and kept.changed:
        held = "forgotten" if kept.data is None else "kept"
        if kept.data is not None:
            returned.append(kept.data)
    return {"runtime": runtime, "kept": held, "served_s": time.perf_counter() - started}, returned


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="a SuperNode's warm worker (started by its ClientApp)")
    parser.add_argument("folder")
    parser.add_argument("--supernode-pid", type=int, required=True)
    parser.add_argument("--idle-s", type=float, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through `finally`: the socket is removed
    serve(Path(args.folder), args.supernode_pid, args.idle_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
