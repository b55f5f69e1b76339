"""The repository as a Flower app: `flwr run .` next to `zofed run runtime=flower`, and the summary
reaching a submitting machine through the streamed log rather than a shared filesystem."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from zofed.errors import ZofedError
from zofed.runtime.flower.deployment import SUMMARY_LINE, flwr_connection, _script, flower_env, summary_from_log_line
from zofed.runtime.flower.loopback import free_port, wait_for_port
from zofed.runtime.flower.server_app import submitted_config
from zofed.runtime.driver import round_rows

REPO = Path(__file__).resolve().parents[3]


def test_pyproject_is_a_flower_app_naming_zofeds_components():
    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "zofed.runtime.flower.server_app:app",
                                 "clientapp": "zofed.runtime.flower.client_app:app"}
    assert (REPO / app["config"]["config"]).is_file()
    assert "federations" not in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]  # `flwr run` would rewrite it


def test_the_clientapp_a_node_greets_with_loads_neither_torch_nor_transformers():
    """A deployment starts a ClientApp process per message; its hello and welcome must not pay for
    torch and the model code (seconds each), which only a cold training message needs (a warm node's
    ClientApp hands it to the worker, whose side of worker.py imports them in the worker only)."""
    code = ("import sys; import zofed.runtime.flower.client_app, zofed.runtime.flower.worker; "
            "print([name for name in ('torch', 'transformers', 'zofed.config') if name in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_submitted_config_reads_the_bundles_yaml_with_overrides_and_config_json_wins(tmp_path):
    bundle = lambda: REPO  # noqa: E731 - where Flower unpacked the bundle
    config = submitted_config({"config": "configs/quickstart.yaml", "overrides": "rounds=2  model=tiny-llama"}, bundle)
    assert (config.rounds, config.model, config.name) == (2, "tiny-llama", "quickstart")
    resolved = submitted_config({"config": "configs/quickstart.yaml", "config-json": json.dumps(config.to_dict() | {"rounds": 5})}, bundle)
    assert resolved.rounds == 5
    with pytest.raises(ZofedError, match="config-json nor config"):
        submitted_config({"overrides": "rounds=2"}, bundle)


def test_summary_comes_from_its_log_line_only():
    summary = {"rounds": 2, "final_eval_loss": 1.5}
    assert summary_from_log_line(f"INFO : {SUMMARY_LINE}{json.dumps(summary)}\n") == summary
    assert summary_from_log_line("round 1/2  val loss 1.2\n") is None
    assert summary_from_log_line(f"{SUMMARY_LINE}{{truncated\n") is None


@pytest.mark.slow
def test_flwr_run_of_the_repository_runs_a_config_on_a_superlink_that_refuses_a_second_node_for_a_partition(
        tmp_path, deployment):
    """Three real SuperNodes for two partitions: one claim on partition 0 is refused, the run completes (the
    binding's unit tests are in test_nodes.py; one deployment serves both checks)."""
    deployment.start_superlink()
    for partition in (0, 1):
        deployment.start_supernode(partition)
    port = free_port()
    second = deployment.zofed("supernode", "--partition-id", "0", "--superlink", deployment.superlink, "--port", str(port),
                              log="supernode-0-second.log")
    wait_for_port(port, second)
    home = tmp_path / "flwr-cli-home"
    home.mkdir()
    (home / "config.toml").write_text(flwr_connection(deployment.superlink, None))
    overrides = (f"model=tiny-llama clients=2 clients_per_round=2 rounds=2 data.limit=120 data.val_size=12 "
                 f"data.test_size=12 eval.accuracy_examples=0 local.local_steps=2 output_dir={tmp_path / 'runs'}")
    run_config = f'config="configs/quickstart.yaml" overrides="{overrides}"'
    result = subprocess.run([_script("flwr"), "run", str(REPO), "zofed", "--run-config", run_config, "--stream"],
                            env={**flower_env(), "FLWR_HOME": str(home)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summaries = [summary_from_log_line(line) for line in result.stdout.splitlines() if SUMMARY_LINE in line]
    summary = next(found for found in summaries if found)
    assert summary["rounds_run"] == 2 and summary["model"] == "tiny-llama"
    assert "quickstart round 2/2" in result.stdout  # the plain per-round lines travel with the log
    assert summary == json.loads((tmp_path / "runs" / "quickstart" / "summary.json").read_text())
    rows = round_rows(tmp_path / "runs" / "quickstart")
    for row in rows:
        assert row["dropped"] == [] and [client["client"] for client in row["per_client"]] == [0, 1]
    trained = [log.read_text().count("Receiving: train message") for log in sorted(tmp_path.glob("supernode-0*.log"))]
    assert sorted(trained) == [0, 2], trained  # one node of partition 0 trained both rounds, the other never
