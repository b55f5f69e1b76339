"""The command line: bad input ends in one line and exit code 2, and writes nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zofed.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zofed.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "missing.yaml"], "not found"),
        (["run", str(QUICKSTART), "algorithm=nope"], "unknown algorithm"),
        (["run", str(QUICKSTART), "model=no-such-model"], "model 'no-such-model' not found"),
        (["run", str(QUICKSTART), "task=nope"], "nope"),
        (["run", str(QUICKSTART), "bogus=1"], "unknown config key 'bogus'"),
        (["run", str(QUICKSTART), "rounds=0"], "rounds"),
        (["run", str(QUICKSTART), "fedmezo.mu=-1"], "fedmezo.mu"),
        (["run", str(QUICKSTART), "clients=100000", "data.limit=300"], "clients"),
        (["run", str(QUICKSTART), "task=gsm8k", "data.path=/nonexistent/file.jsonl"], "not found"),
        (["run", str(QUICKSTART), "rounds"], "key=value"),
        (["data", str(QUICKSTART), "partition.method=nope"], "nope"),
        (["eval", "/nonexistent-run", "--task", "builtin"], "not a run directory"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # runs/ would land here
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert fragment in lines[0]
    assert not (tmp_path / "runs").exists()


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    result = run_cli("run", str(QUICKSTART), "fedmezo.lr=-3", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "fedmezo.lr" in result.stderr


def test_malformed_data_row_is_reported_with_its_row(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "only a question"}\n')
    result = run_cli("run", str(QUICKSTART), "task=gsm8k", f"data.path={data}", cwd=tmp_path)
    assert result.returncode == 2
    assert "2" in result.stderr and "answer" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_list_names_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("fedmezo", "fedavg", "smollm2-135m-instruct", "tiny-llama", "shape:NAME", "llama-3.1-8b", "builtin", "gsm8k",
                 "dirichlet", "meta"):
        assert name in out


def test_list_says_each_methods_weighting_and_basis(capsys):
    from zofed.algorithms import ALGORITHMS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, entry in ALGORITHMS.items():
        block = out.split(f"  {name} ", 1)[1].split("\n  ", 3)
        weighting = entry.settings.model_fields["weighting"].default
        assert f"clients weighted by: {weighting}" in block[1], name
        assert entry.basis and entry.basis in " ".join(block[:3]), name
    assert "task-alignment loss is not implemented" in out


def test_data_prints_per_client_sizes_and_labels(capsys):
    assert main(["data", str(QUICKSTART), "clients=3", "partition.method=meta"]) == 0
    out = capsys.readouterr().out
    assert out.count("client ") == 3 and "size" in out
