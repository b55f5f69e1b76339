"""The same config and seed give bit-identical weights and the same ledger locally and on Flower."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from zofed.runtime.driver import round_rows, run_experiment

from ..helpers import final_weights, tiny_config
from zofed.runtime.flower.deployment import flower_env as flower_process_env
from zofed.runtime.flower.loopback import self_signed_certificates

pytest.importorskip("flwr")
pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[3]
SMALL = ("rounds=2", "local.local_steps=3", "eval.val_examples=8", "eval.test_examples=8", "eval.accuracy_examples=0")
CASES = {  # and FedMeZO's weights upload: test_flower_sim_through_the_cli_matches_local_...
    "seeds-upload-replay-downlink": ("fedmezo", "fedmezo.upload=seeds", "fedmezo.downlink=replay"),
    "zorba-blocks-in-bf16": ("zorba",),  # per-client messages, lowered layers restored between clients
    "fedspzo-split-forward": ("fedspzo",),  # block-tagged seeds up, cached split forward on the client
    "fedzo-seeds-upload": ("fedzo", "fedzo.upload=seeds"),  # b directions a step, the server replays every client's
}


@pytest.fixture(autouse=True)
def flower_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def metrics_rows(config) -> list[dict]:
    return round_rows(config.run_dir)


def assert_same_run(reference, other) -> None:
    a, b = final_weights(reference), final_weights(other)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for row, flower_row in zip(metrics_rows(reference), metrics_rows(other), strict=True):
        assert flower_row["dropped"] == []
        # Flower's own objects around our bytes: more than the payload, but not a re-encoding of it.
        assert row["bytes_up"] < flower_row["flower_bytes_up"] < row["bytes_up"] + 2 * 1024 * len(row["clients"])
        for key in ("clients", "bytes_up", "bytes_down", "bytes_up_by_kind", "bytes_down_by_kind", "train_loss", "eval_loss"):
            assert flower_row[key] == row[key], key


@pytest.mark.parametrize("case", CASES)
def test_flower_simulation_matches_local(tmp_path, case):
    from zofed.runtime.flower.simulation import run_flower_sim

    algorithm, *overrides = CASES[case]
    local = tiny_config(tmp_path / "local", algorithm, *SMALL, *overrides)
    run_experiment(local, show_progress=False)
    simulated = tiny_config(tmp_path / "sim", algorithm, *SMALL, *overrides, "runtime=flower-sim")
    summary = run_flower_sim(simulated, show_progress=False)
    assert summary["bytes_up"] == json.loads((local.run_dir / "summary.json").read_text())["bytes_up"]
    assert_same_run(local, simulated)
    if "replay" in case:
        assert metrics_rows(simulated)[1]["bytes_down_by_kind"]["records"] > 0  # round 2 replayed, not weights


def test_flower_sim_through_the_cli_matches_local_uses_no_deprecated_api_and_leaves_no_superlink(tmp_path):
    """`zofed run` with runtime=flower-sim goes through `flwr run` on a local simulation SuperLink, stopped afterwards;
    FedMeZO's weights upload (the equivalence case this run serves)."""
    import psutil
    import yaml

    overrides = (*SMALL, "clients=3", "clients_per_round=3")
    local = tiny_config(tmp_path / "local", "fedmezo", *overrides)
    run_experiment(local, show_progress=False)
    simulated = tiny_config(tmp_path / "sim", "fedmezo", *overrides, "runtime=flower-sim")
    config_file = tmp_path / "sim.yaml"
    config_file.write_text(yaml.safe_dump(simulated.to_dict()))
    result = subprocess.run([sys.executable, "-m", "zofed.cli", "run", str(config_file)], capture_output=True, text=True,
                            timeout=900, cwd=tmp_path, env={**flower_process_env(), "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deprecat" not in result.stderr.lower(), [line for line in result.stderr.splitlines() if "eprecat" in line]
    assert "(3 simulated SuperNodes)" in result.stderr  # the run's size reached the simulation
    assert json.loads(result.stdout)["bytes_up"] == json.loads((local.run_dir / "summary.json").read_text())["bytes_up"]
    assert_same_run(local, simulated)
    leftovers = [process for process in psutil.process_iter(["cmdline"])
                 if any("zofed-sim-" in part for part in process.info["cmdline"] or [])]
    assert not leftovers, [process.info["cmdline"] for process in leftovers]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for self-signed certificates")
def test_flower_deployment_over_tls_matches_local(tmp_path, deployment, capsys):
    """Loopback SuperLink + 2 SuperNodes started by `zofed flower` with TLS; the runs (FedMeZO, then FedZO on the same
    nodes) submitted by `zofed run`."""
    import yaml

    from zofed.cli import main

    _, *case = CASES["seeds-upload-replay-downlink"]
    local = tiny_config(tmp_path / "local", "fedmezo", *SMALL, *case)
    run_experiment(local, show_progress=False)
    certificates = self_signed_certificates(tmp_path / "certificates")
    ca = str(certificates["ca.crt"])
    deployment.start_superlink("--ssl-certfile", str(certificates["server.crt"]),
                               "--ssl-keyfile", str(certificates["server.key"]), "--ssl-ca-certfile", ca)
    # Node 0 warm (its worker keeps the model loaded; kept model in the node's Context state), node 1 cold (a fresh
    # process loads the model for every message; kept model in a file): both give the local run's weights.
    workers = Path(tempfile.mkdtemp(prefix="zw-"))  # short: a Unix socket's path is at most 107 bytes
    deployment.start_supernode(0, "--root-certificates", ca, "--worker-dir", str(workers / "w"))
    deployment.start_supernode(1, "--root-certificates", ca, "--state-dir", str(tmp_path / "node-1"), "--cold")
    deployed = tiny_config(tmp_path / "deployed", "fedmezo", *SMALL, *case, f"flower.root_certificates={ca}")
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(deployed.to_dict()))
    assert main(["run", str(config_file), "runtime=flower", f"superlink={deployment.superlink}", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rounds"] == 2
    print(json.dumps({key: summary[key] for key in ("bytes_up", "bytes_down", "flower_bytes_up", "flower_bytes_down", "superlink_tcp_bytes")}))
    # The SuperLink's sockets carried at least Flower's encoding of every message, both ways (TLS on top).
    wire = summary["superlink_tcp_bytes"]
    assert wire["nodes_received"] >= summary["flower_bytes_up"] and wire["nodes_sent"] >= summary["flower_bytes_down"]
    assert wire["serverapp_received"] >= summary["flower_bytes_down"]  # the ServerApp hands its messages to the SuperLink
    assert_same_run(local, deployed)
    assert list((tmp_path / "node-1" / deployed.name).glob("kept-1.safetensors"))
    loads = {client["client"]: [] for client in metrics_rows(deployed)[0]["per_client"]}
    for row in metrics_rows(deployed):
        for client in row["per_client"]:
            loads[client["client"]].append(client["model_load_s"])
    assert loads[1][0] > 0 and loads[1][1] > 0  # cold: a fresh ClientApp process loads the model per message
    assert loads[0][0] > 0 and loads[0][1] == 0  # warm: loaded once, by the node's worker
    [worker_folder] = (workers / "w").glob("node-*")
    assert (worker_folder / "worker.sock").exists()
    shutil.rmtree(workers, ignore_errors=True)  # the worker itself stops with its SuperNode (the fixture)

    # The same nodes serve a FedZO run: its `delta` upload (the paper's) crosses a real deployment bit-identically.
    local_fedzo = tiny_config(tmp_path / "local-fedzo", "fedzo", *SMALL)
    run_experiment(local_fedzo, show_progress=False)
    deployed_fedzo = tiny_config(tmp_path / "deployed-fedzo", "fedzo", *SMALL, f"flower.root_certificates={ca}")
    config_file.write_text(yaml.safe_dump(deployed_fedzo.to_dict()))
    assert main(["run", str(config_file), "runtime=flower", f"superlink={deployment.superlink}", "--no-progress"]) == 0
    capsys.readouterr()
    assert_same_run(local_fedzo, deployed_fedzo)
