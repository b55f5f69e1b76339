"""Run tracking: TensorBoard event files, the optional W&B sink, and the console lines."""

import importlib.machinery
import json
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zofed.errors import ZofedError
from zofed.runtime.driver import read_metrics, round_rows, run_experiment
from zofed.tracking import loss_text, scalars

from .runtime.helpers import tiny_config


def _events(run_dir) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _rows(run_dir) -> list[dict]:
    return round_rows(run_dir)


def _event_files(run_dir) -> list:
    return sorted(run_dir.rglob("events.out.tfevents.*"))


def _assert_no_empty_event_file(run_dir) -> None:
    for path in _event_files(run_dir):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        assert accumulator.Tags()["scalars"], path  # a file holds values, or is not written


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("tracked"), "fedmezo", "rounds=2", "local.local_steps=2")
    run_experiment(config, show_progress=False)
    return config


def test_tensorboard_events_hold_every_round_row(tracked_run):
    events, rows = _events(tracked_run.run_dir), _rows(tracked_run.run_dir)
    expected = {
        "loss/train": "train_loss", "loss/validation": "eval_loss", "bytes/up": "bytes_up", "bytes/down": "bytes_down",
        "compute/forward_passes": "forward_passes", "memory/peak_rss_mb": "peak_rss_mb", "time/round_s": "seconds",
    }
    summary = json.loads((tracked_run.run_dir / "summary.json").read_text())
    for tag, key in expected.items():
        before = [] if tag != "loss/validation" else [(0, summary["initial_eval_loss"])]  # the start, as step 0
        assert [step for step, _ in events[tag]] == [step for step, _ in before] + [1, 2], tag
        assert [value for _, value in events[tag]] == pytest.approx([v for _, v in before] + [row[key] for row in rows],
                                                                    rel=1e-6), tag
    assert [value for _, value in events["lr"]] == pytest.approx([0.005, 0.005])
    assert [value for _, value in events["bytes/up_records"]] == [row["bytes_up_by_kind"]["records"] for row in rows]


def test_resumed_run_logs_each_round_once(tmp_path):
    config = tiny_config(tmp_path, "fedavg", "rounds=3", "local.local_steps=2")
    assert run_experiment(config, show_progress=False, stop_after_round=2) is None
    run_experiment(config, resume=True, show_progress=False)
    assert [step for step, _ in _events(config.run_dir)["loss/train"]] == [1, 2, 3]
    assert [step for step, _ in _events(config.run_dir)["loss/validation"]] == [0, 1, 2, 3]  # the steps continue
    _assert_no_empty_event_file(config.run_dir)
    assert [(row["event"], row["round"]) for row in read_metrics(config.run_dir)] == [
        ("before", 0), ("round", 1), ("round", 2), ("round", 3), ("final", 3)]
    assert [value for _, value in _events(config.run_dir)["lr"]] == pytest.approx([5e-3] * 3)  # FedAvg: its settings' lr


def test_tensorboard_off_writes_no_event_files(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", "rounds=1", "local.local_steps=1", "tracking.tensorboard=false")
    run_experiment(config, show_progress=False)
    assert not list(config.run_dir.glob("events.out.tfevents.*"))


def test_piped_output_gets_one_plain_line_per_round(tmp_path, capsys):
    config = tiny_config(tmp_path, "fedmezo", "rounds=2", "local.local_steps=1", "eval.every=2")
    run_experiment(config, show_progress=True)  # stderr is captured, not a terminal: lines, not a bar
    lines = [line for line in capsys.readouterr().err.splitlines() if " round " in line]
    assert len(lines) == 2
    assert lines[0].startswith("test-fedmezo round 1/2  train loss ") and "val loss" not in lines[0]
    assert lines[1].startswith("test-fedmezo round 2/2  val loss ") and "lr 0.005" in lines[1]


def test_the_shown_loss_is_named():
    assert loss_text({"train_loss": 2.5, "eval_loss": None}) == "train loss 2.5000"
    assert loss_text({"train_loss": 2.5, "eval_loss": 1.25}) == "val loss 1.2500"


def test_scalars_leave_out_missing_and_non_finite_values():
    values = scalars({"round": 1, "train_loss": float("nan"), "eval_loss": None, "bytes_up": 10, "per_client": [{"lr": 0.1}, {"lr": 0.3}]})
    assert values == {"bytes/up": 10.0, "lr": pytest.approx(0.2), "clients/sampled": 0.0, "clients/dropped": 0.0,
                      "clients/rejected": 0.0}
    assert scalars({"round": 1}, default_lr=1e-3)["lr"] == 1e-3


class _FakeWandb(types.ModuleType):
    """Stands in for the wandb package (not installed here): records what zofed calls."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self

    def log(self, values, step):
        self.calls.append(("log", step, values))

    def finish(self):
        self.calls.append(("finish",))


def test_wandb_sink_logs_every_round_offline(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = tiny_config(tmp_path, "fedmezo", "rounds=2", "local.local_steps=1", "tracking.wandb=true")
    run_experiment(config, show_progress=False)
    init, *logs, finish = fake.calls
    assert init[0] == "init" and init[1]["mode"] == "offline" and init[1]["name"] == "test-fedmezo"
    assert init[1]["config"]["tracking"]["wandb"] is True
    assert [call[1] for call in logs] == [0, 1, 2, 2] and finish == ("finish",)  # before, the rounds, the final test
    rows = _rows(config.run_dir)
    assert [call[2]["loss/train"] for call in logs[1:3]] == pytest.approx([row["train_loss"] for row in rows])
    assert set(logs[0][2]) >= {"loss/validation", "loss/test"} and set(logs[3][2]) >= {"loss/test"}


def test_wandb_without_the_package_refuses_the_run_before_it_writes(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import machinery: "not installed"
    config = tiny_config(tmp_path, "fedmezo", "tracking.wandb=true")  # a SuperNode or `zofed eval` may read it
    with pytest.raises(ZofedError, match=r"pip install wandb.*tracking.wandb=false"):
        run_experiment(config, show_progress=False)
    assert not config.run_dir.exists()


def _console_config(tmp_path):
    return tiny_config(tmp_path, "fedmezo", "rounds=2", "tracking.tensorboard=false")


def test_a_terminal_gets_the_bar_naming_its_loss(tmp_path, monkeypatch, capsys):
    from zofed.tracking import PlainLines, ProgressBar, open_tracking

    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat stderr as a terminal
    row = {"round": 1, "train_loss": 2.5, "eval_loss": 1.25, "bytes_up": 1, "bytes_down": 1, "forward_passes": 1,
           "peak_rss_mb": 1.0, "seconds": 0.1}
    with open_tracking(_console_config(tmp_path), tmp_path, first_round=1) as tracking:
        assert [type(sink) for sink in tracking.sinks] == [ProgressBar]
        tracking.round(row)
    assert "val loss 1.2500" in capsys.readouterr().err
    with open_tracking(_console_config(tmp_path), tmp_path, first_round=1, show_progress=False) as tracking:
        assert tracking.sinks == []  # --no-progress on a terminal: quiet
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    with open_tracking(_console_config(tmp_path), tmp_path, first_round=1, show_progress=False) as tracking:
        assert [type(sink) for sink in tracking.sinks] == [PlainLines]  # piped: lines even without a bar


def test_tensorboard_holds_the_start_the_final_test_and_the_config(tracked_run):
    events = _events(tracked_run.run_dir)
    summary = json.loads((tracked_run.run_dir / "summary.json").read_text())
    assert events["loss/test"] == [(0, pytest.approx(summary["initial_test_loss"])), (2, pytest.approx(summary["final_test_loss"]))]
    assert events["test/exact_match"] == [(0, pytest.approx(summary["initial_test_exact_match"])),
                                          (2, pytest.approx(summary["final_test_exact_match"]))]
    accumulator = EventAccumulator(str(tracked_run.run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    [text] = accumulator.Tensors("config/text_summary")
    assert b'"algorithm": "fedmezo"' in text.tensor_proto.string_val[0]
    rows = _rows(tracked_run.run_dir)
    assert [event.wall_time for event in accumulator.Scalars("loss/train")] == [row["time"] for row in rows]
    assert all(row["time"] > 1.7e9 for row in rows)  # wall-clock timestamps in metrics.jsonl too


def test_resuming_a_finished_run_leaves_no_empty_event_file(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", "rounds=1", "local.local_steps=1", "eval.accuracy_examples=0")
    run_experiment(config, show_progress=False)
    run_experiment(config, resume=True, show_progress=False)
    _assert_no_empty_event_file(config.run_dir)
    steps = [step for step, _ in _events(config.run_dir)["loss/validation"]]
    assert steps == [0, 1]  # one run: the resume added nothing twice
    # metrics.jsonl is rebuilt from the checkpoint: one final row, the resumed session's
    assert [row["event"] for row in read_metrics(config.run_dir)] == ["before", "round", "final"]


def test_metrics_jsonl_holds_the_start_every_round_and_the_final_evaluation(tracked_run):
    rows = read_metrics(tracked_run.run_dir)
    summary = json.loads((tracked_run.run_dir / "summary.json").read_text())
    assert [(row["event"], row["round"]) for row in rows] == [("before", 0), ("round", 1), ("round", 2), ("final", 2)]
    before, final = rows[0], rows[-1]
    assert (before["eval_loss"], before["test_loss"], before["test_exact_match"]) == (
        summary["initial_eval_loss"], summary["initial_test_loss"], summary["initial_test_exact_match"])
    assert (final["eval_loss"], final["test_loss"], final["test_exact_match"]) == (
        summary["final_eval_loss"], summary["final_test_loss"], summary["final_test_exact_match"])
    times = [row["time"] for row in rows]
    assert times == sorted(times) and times[0] > 1.7e9  # wall clock, in the order recorded


def test_tensorboard_holds_the_config_as_hparams_in_the_runs_own_event_file(tracked_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert {path.parent for path in _event_files(tracked_run.run_dir)} == {tracked_run.run_dir}  # no nested run
    accumulator = EventAccumulator(str(tracked_run.run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert {metric.name.tag for metric in experiment.metric_infos} == {"loss/validation", "loss/test", "test/exact_match"}
    assert start.hparams["algorithm"].string_value == "fedmezo"
    assert start.hparams["rounds"].number_value == 2 and start.hparams["local.local_steps"].number_value == 2


def test_a_loss_that_barely_moves_gets_one_line_naming_what_to_try(tmp_path, capsys):
    config = tiny_config(tmp_path, "fedmezo", "rounds=3", "local.local_steps=1", "fedmezo.lr=1e-9")
    run_experiment(config, show_progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert "fedmezo.lr (now 1e-09)" in warnings[0] and "fedmezo.mu" in warnings[0]
    assert "fedmezo.lr=auto" in warnings[0] and "zofed tune" in warnings[0]  # the fixes, named


def test_a_loss_that_moves_gets_no_warning():
    from zofed.algorithms import ALGORITHMS
    from zofed.tracking import stall_warning

    settings = ALGORITHMS["fedmezo"].settings()
    moving = [{"eval_loss": 2.0}, {"eval_loss": 1.9}]
    flat = [{"eval_loss": 2.0}, {"eval_loss": 1.9999}]
    assert stall_warning(2.0, moving, settings, "fedmezo") is None
    assert stall_warning(2.0, flat, settings, "fedmezo") is not None
    assert stall_warning(2.0, flat[:1], settings, "fedmezo") is None  # only after the first evaluations
    # a backprop method has no lr: auto to offer, only the tuner
    fedavg = stall_warning(2.0, flat, ALGORITHMS["fedavg"].settings(), "fedavg")
    assert "zofed tune" in fedavg and "auto" not in fedavg


def test_the_eta_counts_the_final_evaluation(monkeypatch):
    from rich.console import Console

    from zofed.tracking import ProgressBar

    bar = ProgressBar(3, 1, Console(file=open("/dev/null", "w"), force_terminal=True), evaluation_s=100.0)
    bar.round({"round": 1, "train_loss": 1.0, "seconds": 10.0}, {})
    assert bar._progress.tasks[0].fields["eta"] == "0:02:00"  # 2 rounds of 10 s + the final evaluation's 100 s
    bar.close()


def test_a_long_phase_says_so_when_piped(monkeypatch, capsys):
    import time

    from zofed import status

    with status.phase("quick", live=False):
        pass
    assert capsys.readouterr().err == ""  # a fast step (or a fast failure) adds no line
    monkeypatch.setattr(status, "PHASE_LINE_AFTER_S", 0.01)
    with status.phase("loading the model", live=False):
        time.sleep(0.2)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "zofed: loading the model..." and lines[1].startswith("zofed: loading the model: done in ")
