"""The command line: bad input ends in one line and exit code 2, and writes nothing."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zofed.cli import _parser, main
from zofed.config import load_config, parse_config
from zofed.llm.models import _not_found

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


def test_list_says_each_methods_official_defaults_and_where_it_differs(capsys):
    from zofed.algorithms import ALGORITHMS
    from zofed.algorithms.base import official_defaults_text

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, entry in ALGORITHMS.items():
        block = re.split(r"\n  \S", out.split(f"\n  {name} ", 1)[1], maxsplit=1)[0]  # up to the next method
        for line in entry.differs:
            assert f"differs: {line}" in block, name
        if entry.official_defaults:
            assert f"defaults from the official code: {official_defaults_text(entry)}" in block, name
    assert "defaults from the official code: lr 3e-7, mu 5e-4, num_seeds 4096" in out  # fedkseed
    assert "defaults from the official code: lr 1e-4, mu 1e-3, perturbations 1" in out  # decomfl


HEAVY = ("torch", "transformers", "peft", "flwr", "datasets")


def heavy_imports(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter has imported after running `code` (zofed.cli's main is `main`)."""
    probe = (f"import sys\nfrom zofed.cli import main\n{code}\n"
             f"print(sorted({{name.split('.')[0] for name in sys.modules}} & {set(HEAVY)!r}), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return eval(result.stderr.strip().splitlines()[-1])


def test_list_and_config_show_import_no_heavy_library():
    # `zofed list` prints the registries (under a second): the import set, not the time, is what is checked
    assert heavy_imports('main(["list"])') == []
    assert heavy_imports(f'main(["config", "show", {str(QUICKSTART)!r}])') == []
    # the probe sees an import: running a method's round code does load torch
    assert "torch" in heavy_imports('from zofed.zo import normal_table\nnormal_table(1024)')


def test_data_prints_per_client_sizes_and_labels(capsys):
    assert main(["data", str(QUICKSTART), "clients=3", "partition.method=meta"]) == 0
    out = capsys.readouterr().out
    assert out.count("client ") == 3 and "size" in out


@pytest.mark.parametrize(
    "args, overrides",
    [
        (["run", str(QUICKSTART), "--overwrite", "rounds=2"], ["rounds=2"]),
        (["compare", str(QUICKSTART), "--algorithms", "fedmezo,fedkseed", "model=tiny-llama", "--seeds", "2", "rounds=1"],
         ["model=tiny-llama", "rounds=1"]),
        (["run", str(QUICKSTART), "rounds=2", "--no-progress", "seed=3", "--resume"], ["rounds=2", "seed=3"]),
        (["config", "show", str(QUICKSTART), "rounds=4"], ["rounds=4"]),
    ],
)
def test_overrides_go_anywhere_among_the_flags(args, overrides):
    parsed = _parser().parse_args(args)
    assert parsed.config == str(QUICKSTART) and parsed.overrides == overrides


def test_an_override_after_a_flag_reaches_the_config(capsys):
    assert main(["run", str(QUICKSTART), "--overwrite", "rounds=0"]) == 2  # refused by the config, not by argparse
    assert "config key 'rounds'" in capsys.readouterr().err


def test_nothing_given_prints_the_commands_and_exit_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: zofed [-h] [--version] COMMAND ...")
    for command in ("run", "compare", "data", "config", "eval", "flower"):
        assert f"\n    {command} " in err


def test_a_command_without_its_config_names_config_only(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "zofed run: error: the following arguments are required: CONFIG"


def test_config_show_prints_every_default_with_the_overrides(capsys):
    assert main(["config", "show", str(QUICKSTART), "rounds=4", "fedmezo.lr_strategy=random"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["rounds"] == 4 and shown["fedmezo"]["lr_strategy"] == "random"
    assert shown["fedmezo"]["mu"] == 0.01  # from the YAML
    assert shown["tracking"] == {"tensorboard": True, "wandb": False, "wandb_project": "zofed", "wandb_mode": "offline"}
    assert shown["eval"]["batch_size"] == 16 and shown["trainable"]["target_modules"] == ["q_proj", "v_proj"]  # defaults
    assert parse_config(shown) == load_config(QUICKSTART, ["rounds=4", "fedmezo.lr_strategy=random"])  # round-trips


def test_every_argument_of_data_is_described(capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert re.search(r"CONFIG +YAML config", out) and re.search(r"KEY=VALUE +dotted config overrides", out)
    for action in _parser()._subparsers._group_actions[0].choices["data"]._actions:
        assert action.help, action.dest


def test_model_not_found_offline_says_how_to_allow_downloads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the CLI's own default: offline
    assert main(["run", str(QUICKSTART), "model=nobody/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "model 'nobody/no-such-model' not found" in err and "HF_HUB_OFFLINE=0" in err


def test_model_not_found_online_does_not_suggest_going_online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    message = str(_not_found("nobody/no-such-model"))
    assert "HF_HUB_OFFLINE" not in message and "spelling" in message


@pytest.mark.parametrize("command", [["run"], ["data"], ["config", "show"]])
def test_overrides_may_come_before_the_config(command):
    from zofed.cli import _find_config_among_overrides

    parsed = _parser().parse_args([*command, "rounds=2", str(QUICKSTART), "seed=3"])
    _find_config_among_overrides(parsed)
    assert parsed.config == str(QUICKSTART) and parsed.overrides == ["rounds=2", "seed=3"]


def test_an_override_before_the_config_reaches_it(capsys):
    assert main(["config", "show", "rounds=4", str(QUICKSTART)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["rounds"] == 4


def test_version_and_python_m_zofed(tmp_path):
    from zofed import __version__

    result = subprocess.run([sys.executable, "-m", "zofed", "--version"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"zofed {__version__}"
    result = subprocess.run([sys.executable, "-m", "zofed", "run", "missing.yaml"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and f"'{tmp_path}/missing.yaml' not found" in result.stderr


def test_eval_takes_the_runs_task_by_default():
    parsed = _parser().parse_args(["eval", "runs/x"])
    assert parsed.task is None  # evaluate_run reads the run's task from its config.yaml


def test_config_show_marks_the_sections_the_run_does_not_read(capsys):
    assert main(["config", "show", str(QUICKSTART), "algorithm=fedavg"]) == 0
    out = capsys.readouterr().out
    assert "# unused: algorithm is fedavg (zofed compare reads this section)\nfedmezo:" in out
    assert "# unused" not in out.split("fedmezo:")[1] and yaml.safe_load(out)["algorithm"] == "fedavg"


def test_run_lists_the_unused_sections_once_at_start(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # refused after the start (the data file is missing), so nothing trains
    assert main(["run", str(QUICKSTART), "algorithm=fedavg", "task=gsm8k", "data.path=./none.jsonl"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "zofed: not used by this run (algorithm fedavg): the config's decomfl, fedkseed, fedmezo sections"
    assert f"'{tmp_path}/none.jsonl' not found" in lines[1] and len(lines) == 2
    # a run whose algorithm has its own section among the others reads the config as written: no note
    for own in (["algorithm=fedkseed"], ["algorithm=fedavg", "fedavg.lr=1e-3"]):
        assert main(["run", str(QUICKSTART), *own, "task=gsm8k", "data.path=./none.jsonl"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1, own


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    # `zofed list | head -1`: the pipe closes while the listing is still printing
    result = subprocess.run(f"'{sys.executable}' -m zofed list | head -1", shell=True, capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.stdout.strip() == "algorithms:"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
