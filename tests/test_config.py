"""The config: paths taken from the config file's directory, every problem at once, nothing ignored silently."""

from pathlib import Path

import pytest
import yaml

from zofed.config import load_config, parse_config
from zofed.errors import ZofedError

REPO = Path(__file__).resolve().parents[1]


def write_config(directory: Path, settings: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_a_relative_path_in_a_config_file_is_taken_from_the_files_directory(tmp_path, monkeypatch):
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "project" / "data" / "train.jsonl").write_text("{}\n")
    config_file = write_config(tmp_path / "project" / "configs", {"task": "gsm8k", "data": {"path": "../data/train.jsonl"}})
    monkeypatch.chdir(tmp_path)  # elsewhere: the current directory does not matter
    config = load_config(config_file)
    assert Path(config.data.path) == tmp_path / "project" / "data" / "train.jsonl"


def test_a_relative_path_on_the_command_line_is_taken_from_the_current_directory(tmp_path, monkeypatch):
    config_file = write_config(tmp_path / "configs", {"task": "gsm8k"})
    monkeypatch.chdir(tmp_path)
    assert load_config(config_file, ["data.path=mine.jsonl"]).data.path == "mine.jsonl"


def test_hub_ids_and_builtin_names_are_not_taken_for_paths(tmp_path):
    config_file = write_config(tmp_path, {"task": "gsm8k", "model": "tiny-llama", "data": {"path": "openai/gsm8k"}})
    config = load_config(config_file)
    assert (config.model, config.data.path) == ("tiny-llama", "openai/gsm8k")


def test_the_shipped_configs_find_the_shared_data_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("gsm8k", "alpaca", "codealpaca"):
        path = Path(load_config(REPO / "configs" / f"{name}.yaml").data.path)
        assert path.is_relative_to((REPO.parent / "shared" / "data").resolve()), path
        assert "relative to this file's directory" in (REPO / "configs" / f"{name}.yaml").read_text()


def test_a_missing_config_file_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZofedError, match=f"'{tmp_path}/nope.yaml' not found"):
        load_config("nope.yaml")


def test_every_problem_of_a_config_is_reported_at_once_with_a_did_you_mean():
    with pytest.raises(ZofedError) as error:
        parse_config({"rounds": 0, "trainabel": {}, "fedmezo": {"lrr": 1e-3}})
    message = str(error.value)
    assert "\n" not in message and message.startswith("3 problems")
    assert "did you mean 'trainable'" in message and "did you mean 'lr'" in message and "config key 'rounds'" in message


def test_an_unknown_algorithm_suggests_the_close_name():
    with pytest.raises(ZofedError, match="did you mean 'fedmezo'"):
        parse_config({"algorithm": "fedmez"})


def test_an_override_of_a_section_the_algorithm_does_not_read_is_refused():
    with pytest.raises(ZofedError, match="fedmezo.*algorithm is fedavg, which does not read it"):
        parse_config({}, ["algorithm=fedavg", "fedmezo.lr=1e-3"])
    # a config file may hold several methods' sections (zofed compare reads each one)
    assert parse_config({"algorithm": "fedavg", "fedmezo": {"lr": 1e-3}}).algorithm == "fedavg"


@pytest.mark.parametrize("overrides, problem", [
    (["privacy.dp=step", "privacy.epsilon=0"], r"privacy.epsilon': Input should be greater than 0"),
    (["privacy.dp=step", "privacy.epsilon=-1"], r"privacy.epsilon': Input should be greater than 0"),
    (["privacy.dp=step", "privacy.noise_multiplier=1", "privacy.clip=0"], r"privacy.clip': Input should be greater than 0"),
    (["privacy.dp=step", "privacy.epsilon=3", "privacy.delta=1"], r"privacy.delta': Input should be less than 1"),
    (["privacy.dp=step", "privacy.epsilon=3", "privacy.delta=0"], r"privacy.delta': Input should be greater than 0"),
    (["privacy.dp=step", "privacy.epsilon=3", "privacy.noise_multiplier=1"], "noise_multiplier or privacy.epsilon, not both"),
    (["privacy.dp=step"], "needs privacy.noise_multiplier .* or privacy.epsilon"),
    (["privacy.dp=client", "privacy.epsilon=3"], "dp: client .* is not implemented yet"),
    (["privacy.dp=step", "privacy.epsilon=3", "algorithm=fedavg"], "fedavg trains by backprop"),
    (["privacy.dp=step", "privacy.epsilon=3", "fedmezo.lr=auto"], "range test picks the lr from client 0's unnoised"),
    (["privacy.dp=step", "privacy.epsilon=3", "runtime=flower"], "give privacy.noise_multiplier instead"),
])
def test_privacy_bad_input_is_one_line(overrides, problem):
    with pytest.raises(ZofedError, match=problem) as error:
        parse_config({"algorithm": "fedmezo"}, overrides)
    assert "\n" not in str(error.value)


def test_privacy_refusal_exits_2(tmp_path, capsys):
    from zofed.cli import main

    config = write_config(tmp_path, {"algorithm": "fedavg", "privacy": {"dp": "step", "epsilon": 3}})
    assert main(["run", str(config)]) == 2
    assert "fedavg trains by backprop" in capsys.readouterr().err


# every shipped config; benchmarks/reproduce/gamlpp.yaml holds the benchmark's presets, not a config
SHIPPED = [path for path in sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "benchmarks" / "reproduce").glob("*.yaml"))
           if "algorithm" in yaml.safe_load(path.read_text())]
# The values fedkseed and decomfl ran with in the shipped configs before their defaults became their official code's
# (lr 3e-7, mu 5e-4; lr 1e-4, mu 1e-3): kept explicit, a run of a shipped config does not change.
FORMER_ZO_DEFAULTS = {"lr": 1e-3, "mu": 1e-2}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_config_loads_and_sets_lr_and_mu_where_the_defaults_are_an_official_codes(path):
    """FedMeZO's, FedKSeed's and DeComFL's defaults are their official code's, set for billion-parameter models:
    a shipped config running or holding one of them says which lr and mu its runs use."""
    from zofed.algorithms import ALGORITHMS

    written = yaml.safe_load(path.read_text())
    config = load_config(path)
    official = {name for name, entry in ALGORITHMS.items() if "lr" in entry.official_defaults}
    assert official >= {"fedmezo", "fedkseed", "fedkseed-pro", "decomfl"}
    if config.algorithm in official:
        assert config.algorithm in written, f"{path.name}: its algorithm {config.algorithm} runs on the method defaults"
    for name in official & set(written):
        assert {"lr", "mu"} <= set(written[name]), f"{path.name}: {name} without an explicit lr and mu"


def test_the_shipped_configs_are_found():
    assert {path.name for path in SHIPPED} >= {"quickstart.yaml", "gsm8k.yaml", "fedkseed_bytes.yaml"}


@pytest.mark.parametrize("name", ["quickstart", "gsm8k", "alpaca", "codealpaca"])
def test_the_task_configs_keep_fedkseeds_and_decomfls_former_values(name):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    for method in ("fedkseed", "decomfl"):
        settings = config.methods[method]
        assert {key: getattr(settings, key) for key in FORMER_ZO_DEFAULTS} == FORMER_ZO_DEFAULTS, (name, method)


def test_reproduce_runs_fedkseed_full_parameter_as_its_official_code():
    config = load_config(REPO / "benchmarks" / "reproduce" / "fedkseed_bytes.yaml")
    assert config.trainable.mode == "full" and config.methods["fedkseed"].num_seeds == 4096
