"""The commands `zofed flower superlink/supernode` run, and the config keys of the Flower runtimes."""

from __future__ import annotations

import os

import pytest

from zofed.config import parse_config
from zofed.errors import ZofedError
from zofed.runtime.flower.deployment import (TASK_POLL_S, flower_env, is_loopback, run_flower, superlink_command,
                                             supernode_command, supernode_env, threads_per_node)


def test_superlink_is_insecure_without_certificates_and_tls_with_all_three(tmp_path):
    command = superlink_command("127.0.0.1", 9100)
    assert command[0].endswith("flower-superlink") and "--insecure" in command
    assert command[command.index("--port") + 1] == "9100"
    paths = []
    for name in ("server.crt", "server.key", "ca.crt"):
        (tmp_path / name).write_text("x")
        paths.append(str(tmp_path / name))
    tls = superlink_command("0.0.0.0", 9100, *paths)
    assert "--insecure" not in tls and tls[tls.index("--ssl-ca-certfile") + 1] == paths[2]
    with pytest.raises(ZofedError, match="all three"):
        superlink_command("127.0.0.1", 9100, certfile=paths[0])


def test_supernode_plays_its_partition_with_node_local_paths():
    command = supernode_command(3, "10.0.0.1:9093", 9200, {"model": "/models/smol", "state-dir": "/var/zofed"}, insecure=True)
    assert command[command.index("--superlink") + 1] == "10.0.0.1:9093" and "--insecure" in command
    assert command[command.index("--node-config") + 1] == 'partition-id=3 model="/models/smol" state-dir="/var/zofed" worker-idle-s=600.0'
    cold = supernode_command(3, "10.0.0.1:9093", 9200, insecure=True, worker_idle_s=None)  # no warm worker
    assert cold[cold.index("--node-config") + 1] == "partition-id=3"
    assert "--root-certificates" in supernode_command(0, root_certificates="/ca.crt")


def test_runtime_keys_are_validated():
    config = parse_config({"runtime": "flower", "superlink": "10.0.0.1:9093", "flower": {"timeout_s": 30, "min_replies": 2}})
    assert config.runtime == "flower" and config.flower.min_replies == 2
    with pytest.raises(ZofedError, match="runtime"):
        parse_config({"runtime": "grpc"})
    with pytest.raises(ZofedError, match="flower.min_replies"):
        parse_config({"flower": {"min_replies": 0}})


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.0.0.1:9093", True), ("localhost:9093", True), ("[::1]:9093", True), ("::1", True),
    ("127.8.0.1", True), ("0.0.0.0", False), ("10.0.0.1:9093", False), ("[2001:db8::1]:9093", False),
    ("superlink.example.org:9093", False), ("localhost.example.org:9093", False),
])
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


def test_plaintext_off_this_machine_needs_an_explicit_insecure_flag(tmp_path):
    with pytest.raises(ZofedError, match="not a loopback address.*--insecure"):
        superlink_command("0.0.0.0", 9100)
    assert "--insecure" in superlink_command("0.0.0.0", 9100, insecure=True)
    with pytest.raises(ZofedError, match="not a loopback address.*--root-certificates"):
        supernode_command(0, "10.0.0.1:9093")
    assert "--insecure" in supernode_command(0, "10.0.0.1:9093", insecure=True)
    assert "--insecure" in supernode_command(0, "127.0.0.1:9093")  # this machine only: as before
    config = parse_config({"runtime": "flower", "superlink": "10.0.0.1:9093", "output_dir": str(tmp_path)})
    with pytest.raises(ZofedError, match="flower.root_certificates.*flower.insecure=true"):
        run_flower(config)  # refused before `flwr run` is started
    assert not any(tmp_path.iterdir())


def test_cli_refuses_a_plaintext_superlink_on_all_interfaces(capsys):
    from zofed.cli import main

    assert main(["flower", "superlink", "--host", "0.0.0.0", "--port", "9100"]) == 2
    assert "--insecure" in capsys.readouterr().err
    assert main(["flower", "supernode", "--partition-id", "0", "--superlink", "192.168.1.5:9093"]) == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_flower_env_polls_for_tasks_at_zofeds_interval_unless_the_user_chose_one(monkeypatch):
    monkeypatch.delenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", raising=False)
    assert flower_env()["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == TASK_POLL_S
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "2.5")
    assert flower_env()["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "2.5"


def test_supernodes_sharing_a_machine_split_its_cores_for_training(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert [threads_per_node(nodes) for nodes in (1, 2, 3, 8, 32)] == [8, 4, 2, 1, 1]
    env = supernode_env(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in supernode_env(None) or supernode_env(None)["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS")
    with pytest.raises(ZofedError, match="--threads 0: give at least 1"):
        supernode_env(0)
