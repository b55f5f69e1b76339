"""`zofed tune` on tiny-llama: a study's files, its best config, resuming, pruning, and bad --param input."""

import json
import shutil

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from zofed import tune as tune_module
from zofed.cli import main
from zofed.config import load_config
from zofed.runtime.driver import round_rows
from zofed.tune import STUDY_FILE, STUDY_NAME, run_study

TINY = {
    "name": "tiny", "model": "tiny-llama", "rounds": 2, "clients": 2, "output_dir": "runs",
    "data": {"limit": 60, "val_size": 4, "test_size": 4},
    "local": {"local_steps": 2, "batch_size": 2},
    "eval": {"val_examples": 4, "test_examples": 4, "accuracy_examples": 0, "batch_size": 4},
    "trainable": {"r": 2, "alpha": 4},
    "tracking": {"tensorboard": False},
    "fedmezo": {"lr": 5e-3, "mu": 1e-3},
}
PARAMS = ["fedmezo.lr=1e-3:2e-2:log", "local.local_steps=1:3"]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def study(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "tiny"
    document = run_study(config_file, [], PARAMS, 3, out=out, show_progress=False)
    return out, document


def test_a_study_writes_its_table_plot_and_best_config(study, config_file):
    out, document = study
    assert {"results.json", "results.md", "trials.png", "best.yaml", STUDY_FILE} <= {p.name for p in out.iterdir()}
    assert (out / "trials.png").stat().st_size > 0
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3
    for trial in trials:  # each trial is an ordinary run, in its own directory
        run = load_config(f"{trial['run_dir']}/config.yaml")
        assert run.algorithm_settings.lr == trial["params"]["fedmezo.lr"]
        assert run.local.local_steps == trial["params"]["local.local_steps"]
        assert isinstance(trial["params"]["local.local_steps"], int) and 1e-3 <= trial["params"]["fedmezo.lr"] <= 2e-2
        assert json.loads((out / "trials" / f"trial-{trial['number']:03d}" / "summary.json").read_text())[
            "final_eval_loss"] == trial["value"]
        assert list(trial["intermediate"]) == ["1", "2"]  # the validation loss of each round, as the pruner saw it
    best = min(trials, key=lambda t: t["value"])
    assert document["best"]["number"] == best["number"]
    table = (out / "results.md").read_text()
    assert "| fedmezo.lr | local.local_steps |" in table and f"| {best['number']} (best) |" in table

    tuned = load_config(out / "best.yaml")
    assert tuned.name == "tiny-tuned" and tuned.output_dir == str(config_file.parent / "runs")
    assert tuned.algorithm_settings.lr == best["params"]["fedmezo.lr"]
    assert tuned.local.local_steps == best["params"]["local.local_steps"]


def test_the_best_config_runs_with_zofed_run(study, config_file):
    out, _ = study
    assert main(["run", str(out / "best.yaml"), "rounds=1", "--no-progress"]) == 0
    assert (config_file.parent / "runs" / "tiny-tuned" / "summary.json").is_file()


def test_a_rerun_keeps_finished_trials_and_reruns_an_interrupted_one(study, config_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "tiny"
    shutil.copytree(study[0], out)
    # A process killed in the middle of a trial leaves it RUNNING in the study file.
    killed = optuna.load_study(study_name=STUDY_NAME, storage=JournalStorage(JournalFileBackend(str(out / STUDY_FILE))))
    trial = killed.ask()
    values = {"fedmezo.lr": trial.suggest_float("fedmezo.lr", 1e-3, 2e-2, log=True),
              "local.local_steps": trial.suggest_int("local.local_steps", 1, 3)}
    runs = []
    real = tune_module.run_experiment
    monkeypatch.setattr(tune_module, "run_experiment", lambda config, **kw: runs.append(config) or real(config, **kw))

    argv = ["tune", str(config_file), *(f"--param={p}" for p in PARAMS), "--trials", "4", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    [rerun] = runs  # the three finished trials are not run again
    assert (rerun.algorithm_settings.lr, rerun.local.local_steps) == (values["fedmezo.lr"], values["local.local_steps"])
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert trials[:3] == json.loads((study[0] / "results.json").read_text())["trials"]
    assert trials[3]["state"] == "fail" and trials[3]["interrupted"]
    assert trials[4]["state"] == "complete" and trials[4]["retry_of"] == 3 and trials[4]["params"] == values
    printed = capsys.readouterr().out
    assert "interrupted" in printed and "fedmezo.lr" in printed

    assert main(argv) == 0 and len(runs) == 1  # four finished: nothing to add


def test_a_rerun_with_other_settings_is_refused(study, config_file, tmp_path, capsys):
    out = tmp_path / "tiny"
    shutil.copytree(study[0], out)
    assert main(["tune", str(config_file), "--param", "fedmezo.lr=1e-4:1e-2:log", "--trials", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a study with other settings (params)" in err[0]


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_pruning_stops_a_trial_after_the_evaluation_that_reported_it(config_file, tmp_path):
    document = run_study(config_file, [], ["fedmezo.lr=1e-3:1e-2:log"], 1, out=tmp_path / "p", show_progress=False,
                         pruner=AlwaysPrune())
    [trial] = document["trials"]
    assert trial["state"] == "pruned" and list(trial["intermediate"]) == ["1"]
    run_dir = tmp_path / "p" / "trials" / "trial-000"
    assert len(round_rows(run_dir)) == 1 and not (run_dir / "summary.json").exists()
    assert document["best"] is None and not (tmp_path / "p" / "best.yaml").exists()
    assert "no best config" in (tmp_path / "p" / "results.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--param", "fedmezo.nope=1:2"], "unknown config key 'fedmezo.nope'"),
    (["--param", "fedavg.lr=1e-4:1e-2"], "does not read it"),
    (["--param", "fedmezo.lr=1e-2:1e-4"], "LOW must be below HIGH"),
    (["--param", "fedmezo.lr_alpha=0:0.5:log"], "a log range needs LOW > 0"),
    (["--param", "fedmezo.lr=-1:1"], "fedmezo.lr"),
    (["--param", "fedmezo.lr=1e-5"], "is not of the form KEY=LOW:HIGH[:log]"),
    (["--param", "fedmezo.lr=1e-5:1e-2:ln"], "is not of the form"),
    (["--param", "fedmezo.lr=1e-5:nan"], "not a finite number"),
    (["--param", "local.local_steps=1.5:4"], "local.local_steps"),
    (["--param", "trainable.target_modules=1:2"], "trainable.target_modules"),
    (["--param", "fedmezo.lr_strategy=1:2"], "lr_strategy"),
    (["--param", "name=1:2"], "names the run"),
    (["--param", "fedmezo.lr=1e-4:1e-2", "fedmezo.lr=1e-3"], "also set by the override"),
    (["--param", "seed=1:3", "--param", "seed=2:5"], "given twice"),
    (["--param", "fedmezo.lr=1e-4:1e-2", "runtime=flower-sim"], "in-process"),
    (["--param", "fedmezo.lr=1e-4:1e-2", "--trials", "0"], "--trials 0"),
    ([], "no --param given"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, config_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    trials = [] if "--trials" in argv else ["--trials", "2"]
    assert main(["tune", str(config_file), *trials, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())


def test_a_directory_that_is_not_a_study_is_refused(config_file, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("the user's")
    assert main(["tune", str(config_file), "--param", "fedmezo.lr=1e-4:1e-2", "--trials", "1", "--out", str(tmp_path)]) == 2
    assert "not a zofed tune study" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_the_best_config_keeps_paths_of_the_command_line(study, config_file, tmp_path, monkeypatch):
    """Paths typed as overrides are relative to the current directory; best.yaml lives elsewhere, so they become absolute."""
    document = study[1]
    monkeypatch.chdir(tmp_path)
    tune_module._write_best(document, config_file, ["output_dir=here", "data.path=./d.jsonl"],
                            load_config(config_file, ["output_dir=here"]), tmp_path)
    written = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert written["output_dir"] == str(tmp_path / "here") and written["data"]["path"] == str(tmp_path / "d.jsonl")
