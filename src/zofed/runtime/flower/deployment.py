"""`runtime=flower`: the run on a running SuperLink and SuperNodes (Flower's deployment engine).

`zofed flower superlink` and `zofed flower supernode` are thin wrappers that start
`flower-superlink` / `flower-supernode` with the flags a zofed run needs; `zofed run CONFIG
runtime=flower superlink=HOST:PORT` submits the run with `flwr run`, streams its log, and prints
the summary once the ServerApp wrote it.

Flower 1.41 serves the SuperLink's Fleet, Control and ServerApp APIs over HTTP on one address
(`--host/--port`); a SuperNode serves its ClientApps on its own `--port`. Each message starts a
fresh ClientApp process on the SuperNode, which loads the model again (from the safetensors
cache, plus its data; `setup_s` in each client's metrics row) and keeps a replay client's model in the
node's `state-dir`.

The app bundle `flwr run` ships holds only a pyproject naming zofed's ServerApp and ClientApp:
zofed itself must be installed where the SuperLink and SuperNodes run (runtime dependency
installation is off, so nothing is fetched), and model and data paths are the nodes' own
(node config `model`, `data-path`). Without certificate paths everything is insecure, meant for
127.0.0.1; with them the SuperLink serves TLS and SuperNodes and `flwr run` check it against the
CA certificate (`flower.root_certificates`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from zofed.config import RunConfig
from zofed.errors import ZofedError

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
clientapp = "zofed.runtime.flower.client_app:app"

[tool.flwr.app.config]
config-json = ""
resume = false
overwrite = false
"""


def flower_env() -> dict[str, str]:
    """The environment for Flower's commands: our interpreter's scripts first (the SuperLink starts
    `flower-superexec` by name) and no runtime dependency installation."""
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = scripts + os.pathsep + env.get("PATH", "")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    return env


def superlink_command(
    host: str = "127.0.0.1",
    port: int = 9093,
    certfile: str | None = None,
    keyfile: str | None = None,
    ca_certfile: str | None = None,
    database: str | None = None,
) -> list[str]:
    command = [_script("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    command += _tls_or_insecure(certfile=certfile, keyfile=keyfile, ca_certfile=ca_certfile)
    if database:
        command += ["--database", database]
    return command


def supernode_command(
    partition_id: int,
    superlink: str = "127.0.0.1:9093",
    port: int = 9094,
    node_config: dict[str, str] | None = None,
    root_certificates: str | None = None,
) -> list[str]:
    entries = {"partition-id": partition_id, **(node_config or {})}
    rendered = " ".join(f"{key}={json.dumps(value) if isinstance(value, str) else value}" for key, value in entries.items())
    command = [_script("flower-supernode"), "--superlink", superlink, "--port", str(port), "--node-config", rendered]
    if root_certificates:
        command += ["--root-certificates", root_certificates]
    else:
        command += ["--insecure"]
    return command


def run_flower(
    config: RunConfig, *, resume: bool = False, overwrite: bool = False, show_progress: bool = True
) -> dict | None:
    """Submit the run to the SuperLink at `config.superlink` and wait for it; the summary, or None."""
    del show_progress  # the ServerApp runs in the SuperLink's process tree; its log is streamed instead
    # The ServerApp's working directory is not ours: send an absolute output directory.
    config = config.model_copy(update={"output_dir": str(Path(config.output_dir).resolve())})
    summary_path = config.run_dir / "summary.json"
    with tempfile.TemporaryDirectory(prefix="zofed-flwr-") as scratch:
        app, home = Path(scratch) / "app", Path(scratch) / "home"
        app.mkdir()
        home.mkdir()
        (app / "pyproject.toml").write_text(APP_PYPROJECT)
        (home / "config.toml").write_text(_connection_toml(config))
        overrides = Path(scratch) / "run-config.toml"
        overrides.write_text(
            f"config-json = {json.dumps(json.dumps(config.to_dict()))}\n"
            f"resume = {str(resume).lower()}\noverwrite = {str(overwrite).lower()}\n"
        )
        started_mtime = summary_path.stat().st_mtime if summary_path.exists() else None
        env = {**flower_env(), "FLWR_HOME": str(home)}
        command = [_script("flwr"), "run", str(app), "zofed", "--run-config", str(overrides), "--stream"]
        result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise ZofedError(f"`flwr run` failed (exit {result.returncode}); is a SuperLink listening at {config.superlink}?")
    if not summary_path.is_file() or summary_path.stat().st_mtime == started_mtime:
        raise ZofedError(f"the run on {config.superlink} ended without a summary; see the SuperLink's log")
    return json.loads(summary_path.read_text())


def _connection_toml(config: RunConfig) -> str:
    lines = ["[superlink]", 'default = "zofed"', "", "[superlink.zofed]", f"address = {json.dumps(config.superlink)}"]
    if config.flower.root_certificates:
        lines.append(f"root-certificates = {json.dumps(str(Path(config.flower.root_certificates).resolve()))}")
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
