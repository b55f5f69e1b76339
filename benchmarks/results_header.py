"""The header every committed benchmark result carries: the commit, the resolved configs (method settings
included), the machine, its load average before and after, and only paths relative to the repository.

    header = results_header.begin()                      # before the measurement: commit, machine, load before
    ...                                                  # measure
    document = results_header.end(header, configs, {...the benchmark's own fields...})
    results_header.write(out, document)

`configs` maps a run's name to its resolved config (`RunConfig.to_dict()`, or `configs_from_run_dirs`), so a
reader can tell which weighting, K or lr a run used without guessing from commit dates. Results committed
before this header existed list what they lack under `not_recorded` (docs/results.md: "Regenerating").
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HEADER_FIELDS = ("commit", "resolved_configs", "machine", "load_average_before", "load_average_after")


def commit() -> str:
    """HEAD, with `-dirty` when tracked files differ from it (the measured code is then not that commit)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return (head or "unknown") + ("-dirty" if dirty else "")


def begin() -> dict:
    from zofed.machine import describe_machine

    return {"commit": commit(), "machine": describe_machine(), "load_average_before": list(os.getloadavg())}


def end(header: dict, configs: dict[str, dict], fields: dict) -> dict:
    """The document: the header first (load average after taken now), then the benchmark's own fields."""
    return {**header, "load_average_after": list(os.getloadavg()), "resolved_configs": configs, **fields}


def configs_from_run_dirs(runs: dict[str, str | Path]) -> dict[str, dict]:
    """Resolved configs as `zofed run` wrote them (run_dir/config.yaml), for benchmarks built on run directories."""
    return {name: yaml.safe_load((ROOT / run_dir / "config.yaml").read_text()) for name, run_dir in runs.items()
            if (ROOT / run_dir / "config.yaml").is_file()}


def run_dirs(document: dict) -> dict[str, str]:
    """The run directories a `zofed compare` result (or one shaped like it) names, by run."""
    runs = document.get("runs") or {}
    named = runs.items() if isinstance(runs, dict) else (
        (f"{run.get('algorithm')}-seed{run.get('seed')}", run) for run in runs)
    return {name: run["run_dir"] for name, run in named if isinstance(run, dict) and run.get("run_dir")}


def stamp(path: str | Path, header: dict) -> dict:
    """Add the header to a result another tool wrote (`zofed compare`'s results.json), configs from its run dirs."""
    document = json.loads(Path(path).read_text())
    document = end(header, configs_from_run_dirs(run_dirs(document)), document)
    write(path, document)
    return document


def relative(value, scratch: str | None = None):
    """Absolute paths as the repository sees them (committed results name no machine's directories); paths in a
    scratch directory that is deleted afterwards become `<scratch>`."""
    if isinstance(value, dict):
        return {key: relative(item, scratch) for key, item in value.items()}
    if isinstance(value, list):
        return [relative(item, scratch) for item in value]
    if isinstance(value, str) and Path(value).is_absolute():
        return "<scratch>" if scratch and value.startswith(scratch) else os.path.relpath(value, ROOT)
    return value


def write(out: str | Path, document: dict, scratch: str | None = None) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(relative(document, scratch), indent=2, allow_nan=True, default=str) + "\n")


def resolve(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """A config file plus overrides as `zofed run` resolves them: every default, the method's settings included."""
    from zofed.config import load_config

    return load_config(ROOT / config, list(overrides)).to_dict()  # ROOT / an absolute path is that path
