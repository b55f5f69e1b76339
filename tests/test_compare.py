"""`zofed compare` on tiny-llama: every file with its schema, identical conditions, resumable."""

import json

import pytest

from zofed import compare as compare_module
from zofed.cli import main
from zofed.compare import parse_budget, parse_tune, run_compare
from zofed.config import load_config
from zofed.errors import ZofedError

from .runtime.helpers import CONFORMANCE_SETTINGS

QUICK = ["model=tiny-llama", "rounds=2", "clients=2", "data.limit=120", "data.val_size=12", "data.test_size=12",
         "local.local_steps=3", "local.batch_size=2", "eval.every=1", "eval.val_examples=12", "eval.test_examples=12",
         "eval.accuracy_examples=2", "eval.max_new_tokens=2", "trainable.r=2", "trainable.alpha=4"]
FILES = ("results.json", "results.md", "loss_vs_round.png", "loss_vs_bytes.png", "loss_vs_forward_passes.png", "memory.png")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "compare.yaml"
    sections = {name: CONFORMANCE_SETTINGS[name] for name in ("fedmezo", "fedkseed")}
    path.write_text(json.dumps({"name": "cmp", "task": "builtin", **sections}))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def finished(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    document = run_compare(config_file, QUICK, ["fedmezo", "fedkseed"], seeds=2, out=out, show_progress=False,
                           log=lambda line: None)
    return out, document


def test_every_file_with_its_schema(finished):
    out, document = finished
    assert all((out / name).is_file() and (out / name).stat().st_size > 0 for name in FILES)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["algorithms"] == ["fedmezo", "fedkseed"] and on_disk["seeds"] == [0, 1]
    assert {"cpu", "cores", "torch"} <= set(on_disk["machine"])
    assert len(on_disk["runs"]) == 4
    for run in on_disk["runs"]:
        assert {"algorithm", "seed", "run_dir", "summary", "curve", "hashes"} <= set(run)
        assert [point["round"] for point in run["curve"]] == [0, 1, 2]
        assert run["curve"][-1]["bytes"] == run["summary"]["bytes_up"] + run["summary"]["bytes_down"]
    for algorithm in ("fedmezo", "fedkseed"):
        stats = on_disk["aggregate"][algorithm]["final_test_loss"]
        losses = [r["summary"]["final_test_loss"] for r in on_disk["runs"] if r["algorithm"] == algorithm]
        assert stats["n"] == 2 and stats["mean"] == pytest.approx(sum(losses) / 2)
    table = (out / "results.md").read_text()
    assert "| `fedmezo` |" in table and "| `fedkseed` |" in table and "±" in table


def test_the_table_shows_every_metric_before_and_after(finished):
    out, document = finished
    assert document["metrics"] == ["loss", "exact_match"]  # the built-in task's default set
    header, _, *rows = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    titles = [cell.strip() for cell in header.strip("|").split("|")]
    assert titles[1:3] == ["test loss, before → after", "test exact_match, before → after"]
    for row in rows:
        algorithm = row.split("`")[1]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        for column, metric in ((1, "loss"), (2, "exact_match")):
            before, after = (document["aggregate"][algorithm][f"{when}_test_{metric}"] for when in ("initial", "final"))
            fmt = "{:.4f}" if metric == "loss" else "{:.3f}"
            assert cells[column] == (f"{fmt.format(before['mean'])} ± {fmt.format(before['std'])} → "
                                     f"{fmt.format(after['mean'])} ± {fmt.format(after['std'])}")


def test_algorithms_see_identical_partitions_sampling_and_evaluation(finished):
    _, document = finished
    for seed in (0, 1):
        hashes = [r["hashes"] for r in document["runs"] if r["seed"] == seed]
        assert len(hashes) == 2 and hashes[0] == hashes[1]
    by_seed = {r["seed"]: r["hashes"]["sampling"] for r in document["runs"]}
    assert set(by_seed) == {0, 1}
    fedmezo = {r["seed"]: r["summary"]["final_test_loss"] for r in document["runs"] if r["algorithm"] == "fedmezo"}
    assert fedmezo[0] != fedmezo[1]  # the seeds really differ


def test_resume_runs_only_what_is_missing(finished, config_file, monkeypatch):
    out, _ = finished
    calls = []
    real = compare_module.run_experiment
    monkeypatch.setattr(compare_module, "run_experiment", lambda config, **kw: calls.append(config.name) or real(config, **kw))
    (out / "runs" / "fedkseed-seed1" / "summary.json").unlink()  # as if killed before it finished
    document = run_compare(config_file, QUICK, ["fedmezo", "fedkseed"], seeds=2, out=out, show_progress=False,
                           log=lambda line: None)
    assert calls == ["fedkseed-seed1"]
    assert len(document["runs"]) == 4


def test_budget_in_uplink_bytes_stops_each_run_at_the_same_cost(config_file, tmp_path):
    document = run_compare(config_file, [*QUICK, "rounds=4"], ["fedmezo"], seeds=1, budget=parse_budget("bytes=1"),
                           out=tmp_path / "b", show_progress=False, log=lambda line: None)
    [run] = document["runs"]
    assert run["summary"]["rounds_run"] == 1 and document["budget"] == {"kind": "bytes", "value": 1.0}


@pytest.mark.parametrize("argv, message", [
    (["--algorithms", "fedmezo,nope"], "unknown algorithm 'nope'"),
    (["--algorithms", "fedmezo", "--budget", "joules=3"], "bad budget"),
    (["--algorithms", "fedmezo,fedmezo"], "lists one twice"),
    (["--algorithms", "fedmezo", "--trials", "3"], "belong to --tune"),
    (["--algorithms", "fedmezo", "--tune", "--lr-range", "1e-2:1e-3"], "--lr-range '1e-2:1e-3' must be LOW:HIGH"),
    (["--algorithms", "fedmezo", "--tune", "--trials", "0"], "--trials 0"),
    (["--algorithms", "fedmezo", "--tune", "fedmezo.lr=1e-3"], "--tune sets each method's lr"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, message, config_file, tmp_path, capsys):
    assert main(["compare", str(config_file), *QUICK, "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_tune_tunes_each_methods_lr_on_its_own_then_compares_at_it(config_file, tmp_path):
    out = tmp_path / "tuned"
    # one round, no generation: the test is about the wiring, each study and run stays tiny
    document = run_compare(config_file, [*QUICK, "rounds=1", "local.local_steps=1", "eval.accuracy_examples=0",
                                         "tracking.tensorboard=false"], ["fedmezo", "fedkseed"], out=out, show_progress=False,
                           log=lambda line: None, tune=parse_tune(True, 1, "1e-3:1e-2"))
    for algorithm in ("fedmezo", "fedkseed"):
        tuned = document["tuned"][algorithm]
        assert 1e-3 <= tuned["lr"] <= 1e-2 and tuned["trials"] == 1
        study = json.loads((out / "tune" / algorithm / "results.json").read_text())
        assert len(study["trials"]) == 1 and study["best"]["params"] == {f"{algorithm}.lr": tuned["lr"]}
        [run] = [r for r in document["runs"] if r["algorithm"] == algorithm]
        assert load_config(f"{run['run_dir']}/config.yaml").algorithm_settings.lr == tuned["lr"]
    assert "lr tuned per algorithm" in (out / "results.md").read_text()


def test_other_runtime_is_refused_not_run_locally(config_file, tmp_path, capsys):
    assert main(["compare", str(config_file), *QUICK, "runtime=flower-sim", "--algorithms", "fedmezo",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "cannot honour runtime=flower-sim" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_budget_parser():
    assert parse_budget(None) is None
    assert parse_budget("forward_passes=1e4").value == 1e4
    with pytest.raises(ZofedError):
        parse_budget("bytes=-1")


def test_budget_cut_runs_agree_on_the_rounds_they_share():
    # A byte budget stops fedmezo (weights up) after round 1 while seed-based methods run on.
    hashes = {key: "h" for key in ("partition", "train", "val", "test", "accuracy", "sampling")}

    def run(algorithm, sampling):
        return {"algorithm": algorithm, "seed": 0, "hashes": hashes, "sampling": sampling}

    compare_module.check_same_conditions([run("fedmezo", [[0, 1]]), run("fedkseed", [[0, 1], [1, 2]])])
    with pytest.raises(ZofedError, match="sampling"):
        compare_module.check_same_conditions([run("fedmezo", [[0, 2]]), run("fedkseed", [[0, 1], [1, 2]])])
    with pytest.raises(ZofedError, match="test data"):
        compare_module.check_same_conditions([run("fedmezo", [[0, 1]]), run("x", [[0, 1]]) | {"hashes": hashes | {"test": "other"}}])
