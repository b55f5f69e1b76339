"""Hostile or careless files and values (issue 22): each class ends in one line, exit code 2,
without a traceback, naming the file (and row) where there is one, echoing at most a short
excerpt, and costing no more than a bound."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from zofed.cli import main
from zofed.data import Example, tokenize_example
from zofed.llm import load_tokenizer

from .runtime.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def one_line(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zofed: error:") and "Traceback" not in err, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# Config values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("override", [
    "fedmezo.lr=.inf", "fedmezo.lr=1e400", "fedmezo.lr=1.0e400", "fedmezo.mu=.inf", "fedmezo.mu=.nan",
    "gamlpp.server_optimizer.lr=.inf", "gamlpp.server_optimizer.tau=.inf", "robust.clip_scalar=.inf",
    "robust.norm_bound=.nan", "faults.hostile_scale=.nan", "faults.hostile_scale=-.inf", "partition.alpha=.inf",
    "fedavg.weight_decay=.inf",
])
def test_inf_and_nan_settings_are_one_line(override, capsys):
    one_line(main(["config", "show", str(QUICKSTART), override]), capsys.readouterr().err, override.split("=")[0])


def test_inf_in_the_yaml_file_is_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("algorithm: gamlpp\ngamlpp:\n  server_optimizer: {lr: .inf}\n")
    one_line(main(["config", "show", str(tmp_path / "c.yaml")]), capsys.readouterr().err, "gamlpp.server_optimizer.lr")


def alias_bomb(levels: int = 9) -> str:
    """The billion laughs in YAML, as the value of a known key: `levels` levels of nine aliases each,
    a few hundred bytes (9 levels: 9^9 strings once expanded; the error used to echo them all)."""
    lines = ["name:", '  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnop"[:levels]
    for previous, name in zip(names, names[1:]):
        lines.append(f"  - &{name} [{','.join(['*' + previous] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    bomb = alias_bomb()
    assert len(bomb) < 400
    (tmp_path / "bomb.yaml").write_text(bomb)
    started = time.perf_counter()
    code = main(["run", str(tmp_path / "bomb.yaml"), "--no-progress"])
    line = one_line(code, capsys.readouterr().err, "alias", "line 3")
    assert time.perf_counter() - started < 5 and len(line) < 300
    (tmp_path / "merge.yaml").write_text("base: &base {rounds: 2}\nother:\n  <<: *base\n")
    one_line(main(["config", "show", str(tmp_path / "merge.yaml")]), capsys.readouterr().err, "alias")


def test_a_small_alias_bomb_fails_in_one_short_line(tmp_path, capsys):
    """Three levels (729 strings) show the cost class fast: the old error echoed every one of them."""
    (tmp_path / "bomb.yaml").write_text(alias_bomb(3))
    assert len(one_line(main(["config", "show", str(tmp_path / "bomb.yaml")]), capsys.readouterr().err)) < 300


def test_an_error_echoes_only_a_short_excerpt_of_a_long_value(capsys):
    line = one_line(main(["config", "show", str(QUICKSTART), "name=" + "x/" * 125_000]), capsys.readouterr().err, "name")
    assert len(line) < 400


@pytest.mark.parametrize("secret", ["ghp_SECRET_TOKEN_123456789: x", "hunter2-SECRET_TOKEN: {a: 1}",
                                    "SECRET_TOKEN=abc: def", "data: {SECRET_TOKEN: 1}"])
def test_a_config_linked_to_a_secret_file_does_not_print_it(secret, tmp_path, capsys):
    (tmp_path / "secret").write_text(secret + "\nmore: lines\n")
    (tmp_path / "config.yaml").symlink_to(tmp_path / "secret")
    err = capsys.readouterr().err if main(["run", str(tmp_path / "config.yaml"), "--no-progress"]) else ""
    one_line(2, err)
    assert "SECRET" not in err


def test_a_typo_is_still_named_with_its_fix(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("rounsd: 3\n")
    one_line(main(["config", "show", str(tmp_path / "c.yaml")]), capsys.readouterr().err, "'rounsd'", "'rounds'")


def test_a_non_utf8_config_is_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    one_line(main(["run", str(tmp_path / "c.yaml"), "--no-progress"]), capsys.readouterr().err, "UTF-8", "c.yaml")


def test_a_huge_config_file_is_not_read_whole(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("# padding\n" * 300_000)
    one_line(main(["config", "show", str(tmp_path / "c.yaml")]), capsys.readouterr().err, "larger than")


# Data files ---------------------------------------------------------------------------------------

ROW = b'{"instruction": "Say hi", "output": "hi"}\n'


@pytest.mark.parametrize("name, content, fragments", [
    ("bad.jsonl", ROW + b'{"instruction": "caf\xe9", "output": "x"}\n', ("bad.jsonl", "line 2", "UTF-8")),
    ("bad.json", b'[{"instruction": "caf\xe9", "output": "x"}]', ("bad.json", "line 1", "UTF-8")),
    ("bad.csv", b"instruction,output\nhi,there\ncaf\xe9,x\n", ("bad.csv", "line 3", "UTF-8")),
    ("header.csv", b"instruct\xe9on,output\nhi,there\n", ("header.csv", "line 1", "UTF-8")),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, ("deep.json", "nested")),
    ("deep.jsonl", ROW + b"[" * 100_000 + b"]" * 100_000 + b"\n", ("deep.jsonl", "line 2", "nested")),
    ("deep-row.jsonl", ROW + b'{"instruction": "a", "output": "b", "x": ' + b"[" * 200 + b"]" * 200 + b"}\n",
     ("deep-row.jsonl", "line 2", "nested")),
    ("big.jsonl", ROW + b'{"instruction": "' + b"x" * 5_000_000 + b'", "output": "b"}\n', ("big.jsonl", "line 2", "characters")),
], ids=lambda value: value if isinstance(value, str) else "x")
def test_hostile_data_files_are_one_line_naming_file_and_row(name, content, fragments, tmp_path, capsys):
    (tmp_path / name).write_bytes(content)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"task": "alpaca", "data": {"path": str(tmp_path / name), "val_size": 1, "test_size": 1}}))
    one_line(main(["data", str(config)]), capsys.readouterr().err, *fragments)


def test_a_directory_of_data_is_checked_like_its_files(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_bytes(ROW + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"task": "alpaca", "data": {"path": str(tmp_path / "data")}}))
    one_line(main(["data", str(config)]), capsys.readouterr().err, "train.jsonl", "nested")


class Spy:
    """A tokenizer that records the longest text it was asked to tokenise."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer, self.longest = tokenizer, 0

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, text, **options):
        self.longest = max(self.longest, len(text))
        return self._tokenizer(text, **options)

    def apply_chat_template(self, messages, **options):
        self.longest = max(self.longest, sum(len(message["content"]) for message in messages))
        return self._tokenizer.apply_chat_template(messages, **options)


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "tiny-llama"])
def test_text_is_cut_to_a_bound_of_max_length_before_tokenising(model):
    tokenizer = load_tokenizer(model)
    spy = Spy(tokenizer)
    huge = Example("question words " * 400_000, "answer words " * 400_000, history=(("user", "x" * 2_000_000),
                                                                                     ("assistant", "y " * 10)))
    tokens = tokenize_example(spy, huge, max_length=64)
    assert len(tokens.input_ids) == 64 and spy.longest <= 3 * 64 * 16 + 200
    # what survives truncation is what the whole text gives
    cut = Example(huge.prompt[-2000:], huge.response[:2000], history=(("user", "x" * 2000), ("assistant", "y " * 10)))
    assert tokens == tokenize_example(tokenizer, cut, 64)
    long_prompt = Example("question words " * 400_000, "yes")
    assert tokenize_example(spy, long_prompt, 64) == tokenize_example(tokenizer, Example(long_prompt.prompt[-3000:], "yes"), 64)


# Run readers --------------------------------------------------------------------------------------

def run_dir(tmp_path: Path, config_text: str | bytes | None, weights: bytes | None) -> Path:
    root = tmp_path / "runs" / "r"
    root.mkdir(parents=True)
    if config_text is not None:
        (root / "config.yaml").write_bytes(config_text.encode() if isinstance(config_text, str) else config_text)
    if weights is not None:
        (root / "final.safetensors").write_bytes(weights)
    return root


def good_config(tmp_path: Path) -> str:
    return yaml.safe_dump(tiny_config(tmp_path, "fedmezo").to_dict(), sort_keys=False)


def good_weights(tmp_path: Path) -> bytes:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(4)}, str(tmp_path / "w.safetensors"))
    return (tmp_path / "w.safetensors").read_bytes()


CASES = {
    "empty config": ("", True, ("config.yaml", "damaged")),
    "malformed config": ("rounds: [unclosed\n", True, ("config.yaml", "not valid YAML")),
    "config not a mapping": ("- 1\n", True, ("config.yaml", "no mapping")),
    "config with a bad value": ("rounds: -1\n", True, ("config.yaml", "rounds")),
    "non-UTF-8 config": (b"name: caf\xe9\n", True, ("config.yaml", "UTF-8")),
    "truncated weights": (None, "truncated", ("final.safetensors", "truncated")),
    "garbage weights": (None, "garbage", ("final.safetensors", "damaged")),
    "foreign weights": (None, "foreign", ("final.safetensors", "does not fit")),
    "missing weights": (None, None, ("final weights",)),
}


@pytest.mark.parametrize("command", ["eval", "generate", "export"])
@pytest.mark.parametrize("case", CASES)
def test_run_readers_turn_a_damaged_run_file_into_one_line(command, case, tmp_path, capsys):
    config_text, weights, fragments = CASES[case]
    config_text = good_config(tmp_path) if config_text is None else config_text
    valid = good_weights(tmp_path)
    weights = {True: valid, "truncated": valid[: len(valid) - 7], "garbage": b"\x00garbage" * 3, "foreign": valid,
               None: None}[weights]
    root = run_dir(tmp_path, config_text, weights)
    args = {"eval": ["eval", str(root), "--task", "builtin", "--examples", "2"],
            "generate": ["generate", str(root), "hello", "--max-new-tokens", "1"],
            "export": ["export", str(root), "--out", str(tmp_path / "out")]}[command]
    one_line(main(args), capsys.readouterr().err, *fragments)
    assert not (tmp_path / "out").exists()
