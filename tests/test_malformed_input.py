"""Property-based: any config or data file ends in a valid result or one line with exit code 2.

Never a traceback, and never a run directory left behind by a run that failed. Configs are the
tiny-llama smoke config with one key replaced by an arbitrary value (or an arbitrary extra key);
data files are Alpaca-style JSONL whose rows may miss fields, carry the wrong types, empty or
unicode strings, huge numbers, or be truncated JSON.
"""

import json
import math

import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from zofed.cli import main

BASE = {
    "name": "fuzz", "model": "tiny-llama", "task": "builtin", "rounds": 1, "clients": 2, "seed": 0,
    "data": {"limit": 40, "val_size": 4, "test_size": 4},
    "local": {"local_steps": 1, "batch_size": 2},
    "eval": {"val_examples": 4, "test_examples": 4, "accuracy_examples": 0},
    "trainable": {"r": 2, "alpha": 4},
}
KEYS = ["name", "model", "task", "rounds", "clients", "clients_per_round", "seed", "dtype", "algorithm",
        "data.limit", "data.val_size", "data.test_size", "data.max_length", "partition.method", "partition.alpha",
        "local.local_steps", "local.batch_size", "eval.every", "trainable.mode", "trainable.r",
        "trainable.target_modules", "fedmezo.lr", "fedmezo.mu", "fedmezo.lr_strategy", "fedmezo.upload", "no_such_key"]
LONG_RUN_KEYS = {"rounds", "local.local_steps"}
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "fedavg", "bf16", "full", "dirichlet", "seeds", "-1", "1e400", "ünïcødé", "../x"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2))


def assert_clean_outcome(code: int, err: str, run_dir) -> None:
    assert "Traceback" not in err
    if code == 0:
        assert (run_dir / "summary.json").is_file()
    else:
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("zofed: error:"), lines
        assert not run_dir.exists() or not (run_dir / "summary.json").exists()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=values)
def test_any_config_value_runs_or_fails_in_one_line(key, value, tmp_path_factory, capsys):
    # Many rounds or local steps is a valid run that takes as long as asked, not bad input; their
    # bad values (zero, negative, wrong types) are still drawn.
    assume(not (key in LONG_RUN_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and value > 3))
    root = tmp_path_factory.mktemp("cfg")
    config = json.loads(json.dumps(BASE))
    node = config
    *sections, last = key.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    config["output_dir"] = str(root / "runs")
    path = root / "config.yaml"
    try:
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
    except (yaml.YAMLError, ValueError):
        return  # not representable as YAML: nothing for zofed to read
    code = main(["run", str(path), "--no-progress"])
    event(f"exit code {code}")
    name = config.get("name") if isinstance(config.get("name"), str) else "fuzz"
    assert_clean_outcome(code, capsys.readouterr().err, root / "runs" / name)


field_values = st.one_of(st.text(max_size=30), st.integers(min_value=-10**40, max_value=10**40), st.none(),
                         st.floats(), st.lists(st.text(max_size=3), max_size=2), st.just(""))
rows = st.one_of(
    st.fixed_dictionaries({"instruction": st.text(min_size=1, max_size=30), "input": st.text(max_size=10),
                           "output": st.text(min_size=1, max_size=30)}),
    st.dictionaries(st.sampled_from(["instruction", "input", "output", "other"]), field_values, max_size=4),
    field_values,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data_rows=st.lists(rows, min_size=0, max_size=12), truncate=st.integers(min_value=0, max_value=40))
def test_any_data_file_loads_or_fails_in_one_line(data_rows, truncate, tmp_path_factory, capsys):
    root = tmp_path_factory.mktemp("data")
    lines = [json.dumps(row, ensure_ascii=False) for row in data_rows]
    if lines and truncate:
        lines[-1] = lines[-1][: max(1, len(lines[-1]) - truncate)]  # a torn last line
    path = root / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({**BASE, "task": "alpaca", "output_dir": str(root / "runs"),
                                      "data": {"path": str(path), "val_size": 1, "test_size": 1}}))
    code = main(["data", str(config)])
    event(f"exit code {code}")
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code != 0:
        assert code == 2 and len(captured.err.strip().splitlines()) == 1, captured.err
    assert not (root / "runs").exists()  # `zofed data` never writes a run
