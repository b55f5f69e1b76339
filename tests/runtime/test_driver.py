"""`run_experiment` (runtime/driver.py) on tiny-llama: its files, schema, ledger, eval, partial participation, replay downlink."""

import json

import pytest
import torch

from zofed.cli import main
from zofed.errors import ZofedError
from zofed.runtime.driver import round_rows, run_experiment

from .helpers import final_weights, tiny_config

SUMMARY_KEYS = {
    "algorithm", "rounds", "initial_eval_loss", "final_eval_loss", "initial_test_loss", "final_test_loss",
    "initial_test_exact_match", "final_test_exact_match", "test_accuracy", "metrics", "bytes_up", "bytes_down", "forward_passes", "peak_rss_mb", "wall_s",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("run"), "fedmezo", "rounds=2", "clients=3", "clients_per_round=2")
    summary = run_experiment(config, show_progress=False)
    return config, summary


def test_run_directory_has_every_output(finished_run):
    config, summary = finished_run
    root = config.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.png", "final.safetensors", "best.safetensors"):
        assert (root / name).is_file(), name
    assert SUMMARY_KEYS <= set(json.loads((root / "summary.json").read_text()))
    assert summary["forward_passes"] == 2 * 2 * 2 * 20  # rounds × clients per round × 2 forwards × local steps


def test_metrics_lines_and_ledger(finished_run):
    config, summary = finished_run
    rows = round_rows(config.run_dir)
    assert [row["round"] for row in rows] == [1, 2]
    for row in rows:
        assert len(row["clients"]) == 2 and len(row["per_client"]) == 2
        assert row["bytes_up"] == sum(c["bytes_up"] for c in row["per_client"])
        assert row["bytes_up"] == sum(row["bytes_up_by_kind"].values())
        assert row["eval_loss"] is not None and row["peak_rss_mb"] > 0
    assert summary["bytes_up"] == sum(row["bytes_up"] for row in rows)


def test_eval_command_scores_a_finished_run(finished_run, capsys, tmp_path):
    config, summary = finished_run
    assert main(["eval", str(config.run_dir), "--examples", "8", "--json"]) == 0  # the run's own task (builtin) by default
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 8 and list(result["metrics"]) == ["loss", "exact_match"]  # the task's default metrics
    assert result["metrics"]["loss"] > 0 and 0.0 <= result["metrics"]["exact_match"] <= 1.0
    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": "What is 2 plus 2?", "answer": "2+2=4\n#### 4"}) + "\n")
    assert main(["eval", str(config.run_dir), "--task", "gsm8k", "--data", str(data), "--weights", "best",
                 "--metrics", "gsm8k_answer,rouge_l,loss"]) == 0
    table = capsys.readouterr().out
    assert "task gsm8k, 1 examples" in table and "| metric | value |" in table
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ") and "metric" not in line]
    assert [name.strip() for name, _ in rows] == ["gsm8k_answer", "rouge_l", "loss"]  # in the order asked
    assert all(0.0 <= float(value) for _, value in rows)
    assert main(["eval", str(config.run_dir), "--metrics", "rouge_l,bleu"]) == 2
    assert "unknown metric 'bleu'" in capsys.readouterr().err


def test_existing_run_directory_needs_resume_or_overwrite(finished_run):
    config, _ = finished_run
    with pytest.raises(ZofedError, match="--resume"):
        run_experiment(config, show_progress=False)


def test_byte_ledger_matches_the_codec_for_seed_uploads(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", "rounds=1", "fedmezo.upload=seeds")
    run_experiment(config, show_progress=False)
    [row] = round_rows(config.run_dir)
    for client in row["per_client"]:
        # 20 local steps: 20 int64 seeds + 20 float32 scalars, plus a small JSON header and metrics.
        assert 20 * 12 < client["bytes_up"] < 1024
    assert row["bytes_up_by_kind"]["records"] == 2 * 20 * 12
    assert row["bytes_up_by_kind"]["weights"] == 0


def test_pool_directions_with_seed_upload_learn(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", "fedmezo.directions=pool", "fedmezo.upload=seeds", "fedmezo.pool_size=65536")
    summary = run_experiment(config, show_progress=False)
    assert summary["final_eval_loss"] < 0.995 * summary["initial_eval_loss"]


def test_replay_downlink_matches_weights_downlink_and_resumes_bit_identically(tmp_path):
    common = ("rounds=4", "clients=3", "clients_per_round=2", "fedmezo.upload=seeds", "local.local_steps=6")
    by_weights = tiny_config(tmp_path / "w", "fedmezo", *common)
    run_experiment(by_weights, show_progress=False)
    by_replay = tiny_config(tmp_path / "r", "fedmezo", *common, "fedmezo.downlink=replay")
    run_experiment(by_replay, show_progress=False)
    a, b = final_weights(by_weights), final_weights(by_replay)
    assert all(torch.equal(a[name], b[name]) for name in a)

    rows = round_rows(by_replay.run_dir)
    weight_rows = round_rows(by_weights.run_dir)
    assert rows[0]["bytes_down_by_kind"]["records"] == 0  # nobody holds a model yet: weights
    replayed = [row for row in rows[1:] if row["bytes_down_by_kind"]["records"] > 0]
    assert replayed and all(row["bytes_down"] < weight_row["bytes_down"] for row, weight_row in zip(rows[1:], weight_rows[1:]))

    cut = tiny_config(tmp_path / "cut", "fedmezo", *common, "fedmezo.downlink=replay")
    assert run_experiment(cut, show_progress=False, stop_after_round=2) is None
    run_experiment(cut, resume=True, show_progress=False)
    c = final_weights(cut)
    assert all(torch.equal(b[name], c[name]) for name in b)
    resumed_rows = round_rows(cut.run_dir)
    assert [row["bytes_down"] for row in resumed_rows] == [row["bytes_down"] for row in rows]
