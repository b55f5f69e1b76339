"""Committed benchmark results name no machine's directories: every stored path is relative to the repository."""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def absolute_paths(value) -> list[str]:
    if isinstance(value, dict):
        return [path for item in value.values() for path in absolute_paths(item)]
    if isinstance(value, list):
        return [path for item in value for path in absolute_paths(item)]
    return [value] if isinstance(value, str) and Path(value).is_absolute() else []


def test_committed_results_store_no_absolute_paths():
    documents = sorted((REPO / "benchmarks" / "results").rglob("*.json"))
    assert len(documents) > 10
    found = {str(path.relative_to(REPO)): absolute_paths(json.loads(path.read_text())) for path in documents}
    assert not {name: paths[:3] for name, paths in found.items() if paths}


def test_benchmarks_pass_on_paths_from_the_repository_root(tmp_path, monkeypatch):
    from benchmarks.repo_paths import from_repo_root

    monkeypatch.chdir(tmp_path)
    inside, outside, relative = from_repo_root(REPO / "configs", tmp_path / "runs", "out")
    assert Path.cwd() == REPO and inside == Path("configs")
    assert not outside.is_absolute() and (REPO / outside).resolve() == tmp_path / "runs"
    assert not relative.is_absolute() and (REPO / relative).resolve() == tmp_path / "out"  # relative to where it was given
