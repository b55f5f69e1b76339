"""SuperNode authentication (Flower's own, set up by `zofed flower`): a registered key works, a
node without a key or with an unregistered one is refused, and no private key reaches a log."""

from __future__ import annotations

import json
import shutil
import stat

import pytest

from zofed.cli import main
from zofed.errors import ZofedError
from zofed.runtime.flower.deployment import run_flower, superlink_command, supernode_command, write_supernode_keys
from zofed.runtime.flower.loopback import free_port, self_signed_certificates
from zofed.runtime.driver import round_rows

from ..helpers import tiny_config

pytest.importorskip("flwr")

SMALL = ("rounds=1", "clients=1", "local.local_steps=2", "eval.val_examples=4", "eval.test_examples=4",
         "eval.accuracy_examples=0", "fedmezo.upload=seeds")


@pytest.fixture(autouse=True)
def flower_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def private_lines(path) -> list[str]:
    """The base64 lines of a private key file: none may appear anywhere else."""
    return [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]


def test_keys_are_openssh_p384_and_private_to_their_owner(tmp_path, capsys):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    assert main(["flower", "keys", str(tmp_path / "keys"), "--name", "node-0"]) == 0
    printed = capsys.readouterr().out
    paths = json.loads(printed)
    private, public = tmp_path / "keys" / "node-0", tmp_path / "keys" / "node-0.pub"
    assert paths == {"private_key": str(private), "public_key": str(public)}
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    key = load_ssh_private_key(private.read_bytes(), None)  # as flower-supernode reads it
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()
    assert not any(line in printed for line in private_lines(private))
    with pytest.raises(ZofedError, match="already exists"):
        write_supernode_keys(tmp_path / "keys", "node-0")  # never overwrites a key in use


@pytest.mark.parametrize("planted", ["node", "node.pub"])
def test_keys_are_created_exclusively_never_through_a_symlink(planted, tmp_path):
    target = tmp_path / "victim"
    target.write_text("someone else's file\n")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / planted).symlink_to(target)
    with pytest.raises(ZofedError, match="already exists"):
        write_supernode_keys(keys, "node")
    assert target.read_text() == "someone else's file\n"
    assert sorted(path.name for path in keys.iterdir()) == [planted]  # nothing half-written left behind


def test_public_key_mode_does_not_depend_on_the_umask(tmp_path):
    import os

    old = os.umask(0o077)
    try:
        private, public = write_supernode_keys(tmp_path, "node")
    finally:
        os.umask(old)
    assert stat.S_IMODE(public.stat().st_mode) == 0o644 and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_authentication_needs_tls_and_an_existing_key(tmp_path):
    with pytest.raises(ZofedError, match="needs TLS"):
        superlink_command(enable_supernode_auth=True)
    with pytest.raises(ZofedError, match="needs TLS"):
        supernode_command(0, auth_private_key=str(tmp_path / "key"))
    with pytest.raises(ZofedError, match="not found"):
        supernode_command(0, root_certificates="/ca.crt", auth_private_key=str(tmp_path / "missing"))
    private, _ = write_supernode_keys(tmp_path, "node")
    command = supernode_command(0, root_certificates="/ca.crt", auth_private_key=str(private))
    assert command[command.index("--auth-supernode-private-key") + 1] == str(private)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for self-signed certificates")
def test_only_registered_supernodes_join(tmp_path, deployment, capfd):
    certificates = self_signed_certificates(tmp_path / "certificates")
    ca = str(certificates["ca.crt"])
    keys = tmp_path / "keys"
    member, member_public = write_supernode_keys(keys, "member")
    stranger, _ = write_supernode_keys(keys, "stranger")
    deployment.start_superlink("--ssl-certfile", str(certificates["server.crt"]), "--ssl-keyfile",
                               str(certificates["server.key"]), "--ssl-ca-certfile", ca, "--enable-supernode-auth")
    assert main(["flower", "register", str(member_public), "--superlink", deployment.superlink, "--root-certificates", ca]) == 0
    registered = json.loads(capfd.readouterr().out)
    assert registered["node_id"] > 0

    # Refused: an unregistered key, and no key at all. Each exits instead of joining.
    refused = {
        "unregistered key": deployment.zofed("supernode", "--partition-id", "0", "--superlink", deployment.superlink,
                                             "--port", str(free_port()), "--root-certificates", ca, "--auth-private-key", str(stranger),
                                             log="stranger.log"),
        "no key": deployment.zofed("supernode", "--partition-id", "0", "--superlink", deployment.superlink,
                                   "--port", str(free_port()), "--root-certificates", ca, log="keyless.log"),
    }
    # Accepted: the registered key trains a round (started while the refused nodes are still finding out).
    deployment.start_supernode(0, "--root-certificates", ca, "--auth-private-key", str(member))
    for why, process in refused.items():
        assert process.wait(timeout=60) != 0, why
    assert "Failed to activate SuperNode" in (tmp_path / "stranger.log").read_text()
    assert "must be registered" in (tmp_path / "keyless.log").read_text()
    config = tiny_config(tmp_path, "fedmezo", *SMALL, "runtime=flower", f"superlink={deployment.superlink}",
                         f"flower.root_certificates={ca}", "flower.connect_timeout_s=60")
    summary = run_flower(config, show_progress=False)
    assert summary["rounds"] == 1
    [row] = round_rows(config.run_dir)
    assert row["dropped"] == [] and [client["client"] for client in row["per_client"]] == [0]

    # Secrets never logged: no line of either private key in any log or output of the deployment.
    written = capfd.readouterr()  # this process's and its children's (`flwr run`'s stream)
    outputs = [written.out, written.err] + [log.read_text(errors="replace") for log in tmp_path.glob("*.log")]
    for line in private_lines(member) + private_lines(stranger):
        assert not any(line in output for output in outputs)
