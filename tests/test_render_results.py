"""docs/results.md and the README's numbers are rendered from the committed JSON: a re-measured JSON cannot land
without its text (benchmarks/render_results.py; no model runs, so this is fast)."""

import json
from pathlib import Path

import pytest

from benchmarks import render_results
from benchmarks.results_header import HEADER_FIELDS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("document", render_results.DOCUMENTS)
def test_committed_documents_equal_their_rendering_from_json(document):
    current = (REPO / document).read_text()
    assert "<!-- generated: " in current
    assert render_results.render(current, document) == current, (
        f"{document} is stale: run .venv/bin/python benchmarks/render_results.py and commit it with its JSON")


def test_a_changed_number_in_a_json_changes_the_document(monkeypatch):
    original = render_results.load

    def remeasured(relative):
        document = original(relative)
        if relative == "client_memory.json":  # LoRA FedMeZO and backprop FedAvg with SGD, re-measured
            peaks = {(case["algorithm"], case["mode"]): case for case in document["cases"]}
            peaks[("fedmezo", "lora")]["peak_rss_mb"] = 900.0
            peaks[("fedavg-sgd", "lora")]["peak_rss_mb"] = 1500.0
        return document

    monkeypatch.setattr(render_results, "load", remeasured)
    current = (REPO / "docs/results.md").read_text()
    rendered = render_results.render(current)
    lora_row = next(line for line in rendered.splitlines() if line.startswith("| LoRA ("))
    assert rendered != current and "1,500 MB" in lora_row and "| 0.60 " in lora_row  # FedMeZO / FedAvg-SGD


def test_only_the_generated_blocks_are_rewritten():
    text = "prose 1.0\n<!-- generated: pool-vs-gaussian -->stale<!-- end generated -->\nmore prose 2.0\n"
    rendered = render_results.render(text)
    assert rendered.startswith("prose 1.0\n<!-- generated: pool-vs-gaussian -->pool ")
    assert rendered.endswith("<!-- end generated -->\nmore prose 2.0\n") and "stale" not in rendered


def test_an_unknown_block_names_the_known_ones():
    with pytest.raises(render_results.RenderError, match="unknown generated block 'nope'.*quickstart"):
        render_results.render("<!-- generated: nope -->\n<!-- end generated -->\n")


def test_check_mode_exits_nonzero_with_a_diff(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs").mkdir()
    for document in render_results.DOCUMENTS:
        (tmp_path / document).write_text((REPO / document).read_text())
    stale = (tmp_path / "README.md").read_text().replace("pool 2.212", "pool 9.999")
    (tmp_path / "README.md").write_text(stale)
    monkeypatch.setattr(render_results, "ROOT", tmp_path)
    assert render_results.main(["--check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("-") and "pool 9.999" in line for line in lines)
    assert any(line.startswith("+") and "pool 2.212" in line for line in lines)
    assert render_results.main([]) == 0 and render_results.main(["--check"]) == 0


def test_every_result_records_its_header_or_says_what_it_lacks():
    documents = sorted((REPO / "benchmarks" / "results").rglob("*.json"))
    lacking = {}
    for path in documents:
        document = json.loads(path.read_text())
        recorded = set(document) | set(document.get("not_recorded", []))
        if "load_average_before_after" in document or "load_average" in document:
            recorded |= {"load_average_before", "load_average_after"}
        if "resolved_config" in document or (path.parent / "config.yaml").is_file():
            recorded.add("resolved_configs")
        runs = document.get("runs") or {}
        if any(isinstance(run, dict) and "resolved_config" in run for run in (runs.values() if isinstance(runs, dict) else runs)):
            recorded.add("resolved_configs")
        if isinstance(document.get("before"), dict) and "commit" in document["before"]:
            recorded.add("commit")
        missing = [field for field in HEADER_FIELDS if field not in recorded]
        if missing:
            lacking[str(path.relative_to(REPO))] = missing
    assert not lacking
