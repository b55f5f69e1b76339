"""`runtime=flower`: the run on a running SuperLink and SuperNodes (Flower's deployment engine).

`zofed flower superlink` and `zofed flower supernode` are thin wrappers that start
`flower-superlink` / `flower-supernode` with the flags a zofed run needs; `zofed run CONFIG
runtime=flower superlink=HOST:PORT` submits the run with `flwr run`, streams its log, and prints
the summary the ServerApp logs at the end (the run directory itself stays on the SuperLink's
machine; docs/deployment.md says how to fetch it).

Flower 1.41 serves the SuperLink's Fleet, Control and ServerApp APIs over HTTP on one address
(`--host/--port`); a SuperNode serves its ClientApps on its own `--port`. Each message starts a
fresh ClientApp process on the SuperNode; on a warm node (the default) it hands a training
message to the node's long-lived worker, which keeps the model and data loaded across rounds
(worker.py); on a cold node (`--cold`) it loads the model again (from the safetensors cache, plus
its data; `setup_s` in each client's metrics row). A replay client's model is kept in the
node's `state-dir`, or its Context state.

The app bundle `flwr run` ships holds only a pyproject naming zofed's ServerApp and ClientApp:
zofed itself must be installed where the SuperLink and SuperNodes run (runtime dependency
installation is off, so nothing is fetched), and model and data paths are the nodes' own
(node config `model`, `data-path`). With certificate paths the SuperLink serves TLS and
SuperNodes and `flwr run` check it against the CA certificate (`flower.root_certificates`).
Without them messages travel in plaintext: allowed on 127.0.0.1, refused for any other address
unless the user passes --insecure (`flower.insecure=true` for `zofed run`).

SuperNode authentication is Flower's own: each SuperNode holds an EC private key
(`zofed flower keys` writes a P-384 pair in OpenSSH format, the private file readable by its
owner only), the SuperLink runs with `--enable-supernode-auth` (TLS required) and accepts only
nodes whose public key was registered with it (`zofed flower register`, which is `flwr supernode
register`); a node signs its requests with its private key (`--auth-private-key`). Key contents
are never printed or logged by zofed: commands carry paths.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from zofed.config import RunConfig
from zofed.errors import ZofedError
from zofed.runtime.flower.pipes import PipeLines

# The summary's line in the ServerApp's log: `flwr run --stream` carries it to a submitting
# machine that does not share a filesystem with the SuperLink.
SUMMARY_LINE = "zofed summary: "
PIPE_DRAIN_S = 10.0  # after `flwr run` exits, the longest we wait for the rest of its log
FLWR_CLI_TIMEOUT_S = 120.0  # a `flwr` command that only talks to the SuperLink (register): start-up on a busy machine

CLIENT_APP = "zofed.runtime.flower.client_app:app"
WORKER_IDLE_S = 600.0  # a warm node's worker exits after this long without a message (it reloads on the next)
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "zofedapp"
version = "1.0.0"
description = "zofed: any registered algorithm on Flower"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "zofed"

[tool.flwr.app.components]
serverapp = "zofed.runtime.flower.server_app:app"
clientapp = "{client_app}"

[tool.flwr.app.config]
config-json = ""
resume = false
overwrite = false
"""


# How often a SuperNode's SuperExec looks for a message to launch. Flower's default, 1 s, makes every
# message wait 0.5 s on average before its ClientApp starts, twice a round (the training message and
# the node's next one) - an eighth of a quickstart round. A look is one local gRPC call (~1.5% of a
# core at 0.2 s), cheap for one node per machine; a user's FLWR_SUPEREXEC_TASK_POLL_INTERVAL wins.
TASK_POLL_S = "0.2"


def flower_env() -> dict[str, str]:
    """The environment for Flower's commands: our interpreter's scripts first (the SuperLink starts
    `flower-superexec` by name), no runtime dependency installation, and the SuperExec's poll interval."""
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = scripts + os.pathsep + env.get("PATH", "")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", TASK_POLL_S)
    return env


def supernode_env(threads: int | None = None) -> dict[str, str]:
    """`flower_env()` for a SuperNode, whose ClientApps and warm worker inherit it; with `threads`, torch's
    intra-op threads for its training. SuperNodes sharing a machine must split its cores: two side by side,
    each with every core, spent the quickstart round's compute 3x over (docs/deployment.md)."""
    env = flower_env()
    if threads is not None:
        if threads < 1:
            raise ZofedError(f"--threads {threads}: give at least 1 (the cores this node may use for training)")
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def threads_per_node(nodes: int) -> int:
    """Each of `nodes` SuperNodes on this machine gets an equal share of its cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, nodes))


def superlink_command(
    host: str = "127.0.0.1",
    port: int = 9093,
    certfile: str | None = None,
    keyfile: str | None = None,
    ca_certfile: str | None = None,
    database: str | None = None,
    enable_supernode_auth: bool = False,
    insecure: bool = False,
) -> list[str]:
    command = [_script("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    tls = _tls_or_insecure(certfile=certfile, keyfile=keyfile, ca_certfile=ca_certfile)
    if tls == ["--insecure"]:
        refuse_plaintext(host, insecure, "give --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile")
    command += tls
    if enable_supernode_auth:
        if tls == ["--insecure"]:
            raise ZofedError("SuperNode authentication needs TLS: give --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile too")
        command += ["--enable-supernode-auth"]
    if database:
        command += ["--database", database]
    return command


def supernode_command(
    partition_id: int,
    superlink: str = "127.0.0.1:9093",
    port: int = 9094,
    node_config: dict[str, str] | None = None,
    root_certificates: str | None = None,
    auth_private_key: str | None = None,
    insecure: bool = False,
    worker_idle_s: float | None = WORKER_IDLE_S,
) -> list[str]:
    """`worker_idle_s`: train in the node's warm worker, which exits after this many idle seconds (worker.py);
    None: a cold node, a fresh ClientApp process loads the model for every message."""
    entries = {"partition-id": partition_id, **(node_config or {})}
    if worker_idle_s is not None:
        entries["worker-idle-s"] = float(worker_idle_s)
    rendered = " ".join(f"{key}={json.dumps(value) if isinstance(value, str) else value}" for key, value in entries.items())
    command = [_script("flower-supernode"), "--superlink", superlink, "--port", str(port), "--node-config", rendered]
    if root_certificates:
        command += ["--root-certificates", root_certificates]
    else:
        refuse_plaintext(superlink, insecure, "give --root-certificates (the SuperLink's CA certificate)")
        command += ["--insecure"]
    if auth_private_key:
        if not root_certificates:
            raise ZofedError("SuperNode authentication needs TLS: give --root-certificates (the SuperLink's CA) too")
        if not Path(auth_private_key).is_file():
            raise ZofedError(f"private key file '{auth_private_key}' not found; create one with `zofed flower keys`")
        command += ["--auth-supernode-private-key", auth_private_key]
    return command


def write_supernode_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """A new EC P-384 key pair for one SuperNode, in the OpenSSH formats Flower reads: the private
    key in `directory/name` (mode 600), the public key in `directory/name.pub` (mode 644). Returns both paths.

    Both files are created exclusively and without following symlinks (an existing file or a link
    planted at either path is refused, never written through), each with its mode set before a
    byte is written; a failure removes what this call created.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / name, directory / f"{name}.pub"
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    created = []
    try:
        for path, mode, content in ((private_path, 0o600, private), (public_path, 0o644, public)):
            descriptor = _create_exclusive(path, mode)
            created.append(path)
            with os.fdopen(descriptor, "wb") as output:
                output.write(content)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def _create_exclusive(path: Path, mode: int) -> int:
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise ZofedError(f"'{path}' already exists; pick another --name or remove the old pair first") from None
    os.fchmod(descriptor, mode)  # the umask may have narrowed it (a public key others cannot read is useless to them)
    return descriptor


def register_supernode(public_key: str, superlink: str, root_certificates: str | None) -> int:
    """Register a SuperNode's public key with the SuperLink (`flwr supernode register`); its node id."""
    if not Path(public_key).is_file():
        raise ZofedError(f"public key file '{public_key}' not found; create a pair with `zofed flower keys`")
    if not root_certificates:
        refuse_plaintext(superlink, False, "give --root-certificates (the SuperLink's CA certificate)")
    with tempfile.TemporaryDirectory(prefix="zofed-flwr-") as home:
        Path(home, "config.toml").write_text(flwr_connection(superlink, root_certificates))
        env = {**flower_env(), "FLWR_HOME": home}
        command = [_script("flwr"), "supernode", "register", str(Path(public_key).resolve()), "zofed", "--format", "json"]
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=FLWR_CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ZofedError(f"`flwr supernode register` got no answer from the SuperLink at {superlink} within "
                             f"{FLWR_CLI_TIMEOUT_S:.0f} s; is it running there?") from None
    try:
        answer = json.loads(result.stdout[result.stdout.index("{"):])
    except ValueError:
        answer = {}
    if result.returncode != 0 or not answer.get("success"):
        reason = answer.get("error-message") or (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ZofedError(f"the SuperLink at {superlink} did not register '{public_key}': {reason}")
    return int(answer["node-id"])


def run_flower(
    config: RunConfig, *, resume: bool = False, overwrite: bool = False, show_progress: bool = True
) -> dict | None:
    """Submit the run to the SuperLink at `config.superlink` and wait for it; the summary, or None."""
    del show_progress  # the ServerApp runs in the SuperLink's process tree; its log is streamed instead
    if not config.flower.root_certificates:
        refuse_plaintext(config.superlink, config.flower.insecure, "set flower.root_certificates (its CA certificate)")
    connection = flwr_connection(config.superlink, config.flower.root_certificates)
    returncode, summary = submit_run(config, connection, {}, resume=resume, overwrite=overwrite)
    if returncode != 0:
        raise ZofedError(f"`flwr run` failed (exit {returncode}); is a SuperLink listening at {config.superlink}?")
    if summary is None:
        raise ZofedError(f"the run on {config.superlink} ended without a summary; see the SuperLink's log")
    return summary


def submit_run(
    config: RunConfig, connection_toml: str, extra_env: dict[str, str], *, resume: bool, overwrite: bool,
    home: Path | None = None, extra_args: tuple[str, ...] = (), client_app: str = CLIENT_APP,
) -> tuple[int, dict | None]:
    """`flwr run` of zofed's app with the resolved config, through the SuperLink connection
    `connection_toml` (the `zofed` entry of a Flower config file, written to `home` or a scratch
    FLWR_HOME); the exit code and the summary from the streamed log."""
    # The ServerApp's working directory is not ours: send an absolute output directory.
    config = config.model_copy(update={"output_dir": str(Path(config.output_dir).resolve())})
    with tempfile.TemporaryDirectory(prefix="zofed-flwr-") as scratch:
        app, home = Path(scratch) / "app", home or Path(scratch) / "home"
        app.mkdir()
        home.mkdir(exist_ok=True)
        (app / "pyproject.toml").write_text(APP_PYPROJECT.replace("{client_app}", client_app))
        (home / "config.toml").write_text(connection_toml)
        overrides = Path(scratch) / "run-config.toml"
        overrides.write_text(
            f"config-json = {json.dumps(json.dumps(config.to_dict()))}\n"
            f"resume = {str(resume).lower()}\noverwrite = {str(overwrite).lower()}\n"
        )
        env = {**flower_env(), "FLWR_HOME": str(home), **extra_env}
        command = [_script("flwr"), "run", str(app), "zofed", "--run-config", str(overrides), "--stream", *extra_args]
        return _stream_for_summary(command, env)


def _stream_for_summary(command: list[str], env: dict[str, str]) -> tuple[int, dict | None]:
    """Run `flwr run --stream`, echo its log to stderr (stdout is for the summary), and take the
    summary from the ServerApp's log line: the run directory is on the SuperLink's machine, which
    need not share a filesystem with this one.

    The log is read by a thread (pipes.py) and this one waits for `flwr run` itself: a process it
    started that keeps the pipe open (a SuperLink it auto-started) cannot hold us past its exit."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = PipeLines(process.stdout, echo=sys.stderr.write)
        returncode = process.wait()
        log.wait_closed(PIPE_DRAIN_S)
    except BaseException:
        process.kill()  # Ctrl-C, or any failure here: the submission must not outlive us
        process.wait()
        raise
    summary = None
    for line in log.text().splitlines():
        summary = summary_from_log_line(line) or summary
    return returncode, summary


def summary_from_log_line(line: str) -> dict | None:
    """The summary in one line of a streamed ServerApp log, or None for any other line."""
    _, found, document = line.partition(SUMMARY_LINE)
    if not found:
        return None
    try:
        return json.loads(document)
    except ValueError:
        return None  # a log line that quotes the marker without a whole summary after it


def refuse_plaintext(address: str, insecure: bool, fix: str) -> None:
    """Refuse plaintext to or on an address other machines can reach, unless the user accepted it.

    Without TLS, anyone on the path reads every message and can inject their own; on 127.0.0.1
    only this machine's users can.
    """
    if insecure or is_loopback(address):
        return
    raise ZofedError(
        f"'{address}' is not a loopback address and the connection has no TLS, so anyone on the network could read "
        f"and alter the run's messages; {fix}, or accept plaintext explicitly with --insecure (flower.insecure=true)"
    )


def is_loopback(address: str) -> bool:
    """Whether HOST or HOST:PORT ([IPv6]:PORT) names this machine only."""
    host = address
    if address.startswith("["):
        host = address[1:].partition("]")[0]
    elif address.count(":") == 1:
        host = address.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def flwr_connection(superlink: str, root_certificates: str | None) -> str:
    """`flwr`'s connection file: the SuperLink's address, and its CA certificate or insecure."""
    lines = ["[superlink]", 'default = "zofed"', "", "[superlink.zofed]", f"address = {json.dumps(superlink)}"]
    if root_certificates:
        lines.append(f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}")
    else:
        lines.append("insecure = true")
    return "\n".join(lines) + "\n"


def _tls_or_insecure(certfile: str | None, keyfile: str | None, ca_certfile: str | None) -> list[str]:
    given = [path for path in (certfile, keyfile, ca_certfile) if path]
    if not given:
        return ["--insecure"]
    if len(given) != 3:
        raise ZofedError("TLS needs all three of --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile (or none, for insecure)")
    for path in given:
        if not Path(path).is_file():
            raise ZofedError(f"certificate file '{path}' not found")
    return ["--ssl-certfile", certfile, "--ssl-keyfile", keyfile, "--ssl-ca-certfile", ca_certfile]


def _script(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.is_file():
        return str(found)
    located = shutil.which(name)
    if located is None:
        raise ZofedError(f"'{name}' not found; install Flower with `pip install 'flwr[simulation]==1.41.0'`")
    return located
