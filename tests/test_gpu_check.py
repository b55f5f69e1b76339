"""benchmarks/gpu/check.py, the GPU check's driver, run on the CPU with the tiny shape so it never rots."""

import json
import subprocess
from pathlib import Path

from benchmarks.gpu.check import MEMORY_CASES, main

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_the_ladder_and_the_memory_comparison(tmp_path):
    out = tmp_path / "gpu" / "check.json"
    code = main(["--out", str(out), "--device", "cpu", "--shapes", "tiny", "--memory-shape", "tiny", "--in-process",
                 "--repeats", "1", "--seq-len", "16", "--steps", "2", "--pool-size", "65536"])
    document = json.loads(out.read_text())
    assert code == 0, [row.get("error") for row in document["ladder"] + document["client_memory"]]
    assert document["device"]["type"] == "cpu" and document["dtype"] == "fp32" and document["skipped"] == []
    assert [(row["shape"], row["mode"]) for row in document["ladder"]] == [("tiny", "lora"), ("tiny", "full")]
    for row in document["ladder"]:
        assert row["zo_step_pool_s"] > 0 and row["ratio_pool_to_two_forwards"] > 0 and row["peak_rss_backprop_mb"] > 0
    memory = {(row["case"], row["mode"]): row for row in document["client_memory"]}
    assert set(memory) == {(case, mode) for case, mode, _, _ in MEMORY_CASES}
    assert memory[("fedmezo", "lora")]["trainable_params"] < memory[("fedavg", "full")]["trainable_params"]
    assert all(row["peak_rss_mb"] > 0 and row["local_steps"] == 2 for row in memory.values())


def test_a_spent_budget_skips_and_says_so(tmp_path):
    out = tmp_path / "check.json"
    assert main(["--out", str(out), "--device", "cpu", "--shapes", "tiny", "--memory-shape", "tiny", "--in-process",
                 "--budget-s", "0"]) == 0
    document = json.loads(out.read_text())
    assert document["ladder"] == [] and document["client_memory"] == []
    assert len(document["skipped"]) == 2 + len(MEMORY_CASES)


def test_unknown_shapes_are_refused(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.json"), "--device", "cpu", "--shapes", "llama-9b"]) == 2
    assert "unknown shapes ['llama-9b']" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_run_sh_needs_an_output_directory():
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: benchmarks/gpu/run.sh OUT_DIR" in result.stderr
