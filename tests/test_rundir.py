"""Nothing the user owns is deleted: every refusal of `zofed run` in a directory holding files zofed
did not write leaves each of them as it was, and says why in one line with exit code 2."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from zofed import atomic
from zofed.algorithms import ServerState
from zofed.checkpoint import Checkpoint, save_checkpoint
from zofed.cli import main
from zofed.config import parse_config
from zofed.errors import ZofedError
from zofed.rundir import LOCK, MARKER, open_run_dir, refuse_changed_settings, start_run_dir

from .runtime.helpers import tiny_config

SMALL = ("rounds=1", "local.local_steps=1", "eval.val_examples=4", "eval.test_examples=4", "eval.accuracy_examples=0")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its content (symlinks as their target)."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            files[str(path.relative_to(root))] = os.readlink(path).encode()
        elif path.is_file():
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


def user_files(directory: Path, marked: bool = False) -> None:
    """Files zofed did not write (plus its marker, when `marked`: a marker proves nothing by itself)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "thesis.tex").write_text("years of work\n")
    (directory / "data").mkdir(exist_ok=True)
    (directory / "data" / "rows.jsonl").write_text('{"x": 1}\n')
    if marked:
        (directory / MARKER).write_text("planted\n")


def write_config(path: Path, **fields) -> Path:
    config = tiny_config(path.parent, "fedmezo", *SMALL).to_dict() | fields
    path.write_text(yaml.safe_dump(config))
    return path


def run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zofed: error:") and fragment in lines[0], lines


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_are_refused_and_delete_nothing(name, tmp_path, capsys):
    user_files(tmp_path / "home" / "runs" / "earlier-run", marked=True)
    user_files(tmp_path / "home", marked=True)
    config = write_config(tmp_path / "config.yaml", name=name, output_dir=str(tmp_path / "home" / "runs"))
    before = snapshot(tmp_path)
    assert_one_line(*run(["run", str(config), "--overwrite", "--no-progress"], capsys), f"name={name}")
    assert snapshot(tmp_path) == before
    with pytest.raises(ZofedError, match="no directory of its own"):
        parse_config({"name": name})


def test_overwrite_refuses_a_directory_without_the_marker(tmp_path, capsys):
    user_files(tmp_path / "runs" / "mine")
    config = write_config(tmp_path / "config.yaml", name="mine", output_dir=str(tmp_path / "runs"))
    before = snapshot(tmp_path)
    assert_one_line(*run(["run", str(config), "--overwrite", "--no-progress"], capsys), "not a zofed run directory")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["working directory", "ancestor of it", "home"])
def test_overwrite_never_removes_the_working_directory_its_ancestors_or_home(where, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    user_files(project, marked=True)  # even carrying the marker
    user_files(project / "sub", marked=True)
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    if where == "working directory":
        monkeypatch.chdir(project)
        output_dir, name = "..", "project"
    elif where == "ancestor of it":
        monkeypatch.chdir(project / "sub")
        output_dir, name = str(tmp_path), "project"
    else:
        monkeypatch.setenv("HOME", str(project))
        monkeypatch.chdir(tmp_path)
        output_dir, name = str(tmp_path), "project"
    # on the command line, where a relative path means the working directory (in a file: the file's directory)
    config = write_config(tmp_path / "config.yaml", name=name)
    before = snapshot(tmp_path)
    assert_one_line(*run(["run", str(config), f"output_dir={output_dir}", "--overwrite", "--no-progress"], capsys),
                    "would delete")
    assert snapshot(tmp_path) == before


def test_a_symlinked_run_directory_is_not_followed(tmp_path, capsys):
    user_files(tmp_path / "precious", marked=True)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "link").symlink_to(tmp_path / "precious")
    config = write_config(tmp_path / "config.yaml", name="link", output_dir=str(tmp_path / "runs"))
    before = snapshot(tmp_path)
    assert_one_line(*run(["run", str(config), "--overwrite", "--no-progress"], capsys), "not a plain directory")
    assert snapshot(tmp_path) == before


def test_resume_without_a_verifiable_checkpoint_deletes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "broken"
    user_files(run_dir, marked=True)
    (run_dir / "checkpoints" / "ckpt-00001").mkdir(parents=True)
    (run_dir / "checkpoints" / "ckpt-00001" / "state.json").write_text("{not json")
    (run_dir / "checkpoints" / "LATEST").write_text("ckpt-00001")
    config = write_config(tmp_path / "config.yaml", name="broken", output_dir=str(tmp_path / "runs"))
    before = snapshot(tmp_path)
    code, err = run(["run", str(config), "--resume", "--no-progress"], capsys)
    assert_one_line(code, err.splitlines()[-1], "nothing to continue")  # after the checkpoint's own warning
    assert snapshot(tmp_path) == before
    missing = write_config(tmp_path / "other.yaml", name="never-ran", output_dir=str(tmp_path / "runs"))
    assert_one_line(*run(["run", str(missing), "--resume", "--no-progress"], capsys), "nothing to continue")
    assert not (tmp_path / "runs" / "never-ran").exists()


def resumable_run(tmp_path: Path, **fields) -> tuple[Path, dict]:
    """A run directory as a finished round leaves it: config.yaml, a checkpoint that verifies, the user's files."""
    config = tiny_config(tmp_path, "fedmezo", *SMALL, **fields)
    run_dir = config.run_dir
    user_files(run_dir, marked=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    save_checkpoint(run_dir / "checkpoints", Checkpoint(1, ServerState(weights={"w": torch.ones(2)}), {"history": []}))
    return run_dir, config.to_dict()


def test_resume_with_changed_settings_is_refused_naming_them(tmp_path, capsys):
    run_dir, saved = resumable_run(tmp_path)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(saved | {"seed": 8, "fedmezo": {**saved["fedmezo"], "lr": 0.5}}))
    before = snapshot(tmp_path)
    code, err = run(["run", str(changed), "--resume", "--no-progress"], capsys)
    assert_one_line(code, err, "changed settings (fedmezo.lr, seed)")
    assert snapshot(tmp_path) == before
    # rounds may grow, and where the run directory is written from does not change the run
    refuse_changed_settings(run_dir, saved | {"rounds": 5, "output_dir": "/elsewhere"})
    with pytest.raises(ZofedError, match=r"\(local.batch_size\)"):
        refuse_changed_settings(run_dir, saved | {"local": {**saved["local"], "batch_size": 1}})
    with pytest.raises(ZofedError, match=r"\(partition.new_key\)"):
        refuse_changed_settings(run_dir, saved | {"partition": {**saved["partition"], "new_key": 1}})


def test_resume_with_a_verifiable_checkpoint_continues_and_marks_an_old_run(tmp_path):
    run_dir, saved = resumable_run(tmp_path)
    (run_dir / MARKER).unlink()  # a run from before the marker
    checkpoint = open_run_dir(run_dir, resume=True, overwrite=False)
    assert checkpoint is not None and checkpoint.round == 1
    start_run_dir(run_dir, saved, checkpoint).release()
    assert (run_dir / MARKER).is_file() and (run_dir / "thesis.tex").is_file()  # resuming deletes nothing


def zofed_files(directory: Path) -> None:
    """What a finished (or killed) run leaves in its directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in (MARKER, "config.yaml", "metrics.jsonl", "summary.json", "report.png", "final.safetensors",
                 "best.safetensors", "events.out.tfevents.1700000000.host.1.0", ".summary.123.tmp.json"):
        (directory / name).write_text("zofed's\n")
    save_checkpoint(directory / "checkpoints", Checkpoint(1, ServerState(weights={"w": torch.ones(2)}), {"history": []}))
    (directory / "clients" / "3").mkdir(parents=True)
    (directory / "clients" / "3" / "model.safetensors").write_text("kept\n")


def test_overwrite_clears_a_run_directory_of_zofeds_files(tmp_path):
    run_dir = tmp_path / "runs" / "old"
    zofed_files(run_dir)
    assert open_run_dir(run_dir, resume=False, overwrite=True) is None
    with start_run_dir(run_dir, {}, None):
        assert sorted(path.name for path in run_dir.iterdir()) == [LOCK, MARKER]
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["old"]  # no staging left behind
    with pytest.raises(ZofedError, match="already exists"):
        open_run_dir(run_dir, resume=False, overwrite=False)


@pytest.mark.parametrize("user_file", ["thesis.tex", "notes", "data/rows.jsonl", "checkpoints-link"])
def test_overwrite_refuses_a_marked_run_directory_holding_a_users_file_naming_it(user_file, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "mine"
    zofed_files(run_dir)
    path = run_dir / user_file
    path.parent.mkdir(parents=True, exist_ok=True)
    if user_file.endswith("link"):
        path.symlink_to(tmp_path)  # a link is never zofed's, whatever it points at
    else:
        path.write_text("years of work\n")
    config = write_config(tmp_path / "config.yaml", name="mine", output_dir=str(tmp_path / "runs"))
    before = snapshot(tmp_path)
    assert_one_line(*run(["run", str(config), "--overwrite", "--no-progress"], capsys),
                    f"holds files zofed did not write ({user_file.split('/')[0]})")
    assert snapshot(tmp_path) == before
    with pytest.raises(ZofedError, match=user_file.split("/")[0]):
        start_run_dir(run_dir, {}, None)  # checked again under the lock
    assert snapshot(tmp_path) == before


HOLDER = """
import sys, time
from zofed.rundir import start_run_dir
lock = start_run_dir(sys.argv[1], {}, None)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("flags", [["--overwrite"], ["--resume"], ["--resume", "--overwrite"]])
def test_a_second_process_on_the_same_run_directory_refuses_in_one_line(flags, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "busy"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        zofed_files(run_dir)  # what the running run has written so far
        config = write_config(tmp_path / "config.yaml", name="busy", output_dir=str(tmp_path / "runs"))
        before = snapshot(tmp_path)
        assert_one_line(*run(["run", str(config), *flags, "--no-progress"], capsys), "in use by another zofed run")
        assert snapshot(tmp_path) == before
        with pytest.raises(ZofedError, match="in use by another zofed run"):
            start_run_dir(run_dir, {}, None)  # the lock itself, past the early check
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    # the OS released the killed holder's lock: the directory is free again
    start_run_dir(run_dir, {}, None).release()


def test_a_run_releases_its_lock_when_it_ends_or_fails(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    with pytest.raises(RuntimeError):
        with start_run_dir(run_dir, {}, None):
            raise RuntimeError("the run failed")
    start_run_dir(run_dir, {}, None).release()  # not held any more


@pytest.mark.parametrize("text, fragment", [("", "is empty"), ("# only a comment\n", "is empty"),
                                            ("- 1\n- 2\n", "mapping"), ("7\n", "mapping"), ("just words\n", "mapping")])
def test_empty_or_non_mapping_config_files_are_one_line(text, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(text)
    assert_one_line(*run(["run", "config.yaml", "--no-progress"], capsys), fragment)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("failing_write", [1, 4])
def test_disk_full_ends_in_one_line_and_leaves_no_partial_file(failing_write, tmp_path, monkeypatch, capsys):
    """The n-th atomic write finds the disk full (1: the run's marker; 4: a write during the first round)."""
    writes = []
    real_fsync = atomic.fsync_file

    def full_disk(path):
        writes.append(path)
        if len(writes) == failing_write:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_fsync(path)

    monkeypatch.setattr(atomic, "fsync_file", full_disk)
    user_files(tmp_path / "runs")
    config = write_config(tmp_path / "config.yaml", name="full", output_dir=str(tmp_path / "runs"))
    before = snapshot(tmp_path / "runs")
    code, err = run(["run", str(config), "--no-progress"], capsys)
    assert_one_line(code, err, "disk is full")
    assert len(writes) == failing_write
    after = snapshot(tmp_path / "runs")
    assert {name: data for name, data in after.items() if name in before} == before
    assert not [name for name in after if ".tmp" in name or "starting" in name], after
    if failing_write > 1:  # what was written before the disk filled is whole
        assert yaml.safe_load((tmp_path / "runs" / "full" / "config.yaml").read_text())["name"] == "full"


def test_resume_refuses_changed_data_at_the_same_path_in_one_line(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(f'{{"instruction": "Say {i}", "output": "{i}"}}\n' for i in range(24)))
    config = write_config(tmp_path / "config.yaml", name="data", output_dir=str(tmp_path / "runs"), task="alpaca",
                          data={"path": str(rows), "val_size": 2, "test_size": 2})
    assert main(["run", str(config), "--no-progress"]) == 0
    capsys.readouterr()
    rows.write_text(rows.read_text().replace('"output": "5"', '"output": "five"'))
    before = snapshot(tmp_path / "runs")
    code, err = run(["run", str(config), "rounds=2", "--resume", "--no-progress"], capsys)
    assert_one_line(code, err, "changed data (")
    assert snapshot(tmp_path / "runs") == before
