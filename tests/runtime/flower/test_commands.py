"""The commands `zofed flower superlink/supernode` run, and the config keys of the Flower runtimes."""

from __future__ import annotations

import pytest

from zofed.config import parse_config
from zofed.errors import ZofedError
from zofed.runtime.flower.deployment import superlink_command, supernode_command


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
    command = supernode_command(3, "10.0.0.1:9093", 9200, {"model": "/models/smol", "state-dir": "/var/zofed"})
    assert command[command.index("--superlink") + 1] == "10.0.0.1:9093" and "--insecure" in command
    assert command[command.index("--node-config") + 1] == 'partition-id=3 model="/models/smol" state-dir="/var/zofed"'
    assert "--root-certificates" in supernode_command(0, root_certificates="/ca.crt")


def test_runtime_keys_are_validated():
    config = parse_config({"runtime": "flower", "superlink": "10.0.0.1:9093", "flower": {"timeout_s": 30, "min_replies": 2}})
    assert config.runtime == "flower" and config.flower.min_replies == 2
    with pytest.raises(ZofedError, match="runtime"):
        parse_config({"runtime": "grpc"})
    with pytest.raises(ZofedError, match="flower.min_replies"):
        parse_config({"flower": {"min_replies": 0}})
