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


def test_the_results_header_records_commit_machine_load_and_resolved_method_settings(tmp_path):
    from benchmarks import results_header

    header = results_header.begin()
    assert header["commit"] and header["machine"]["cores"] and len(header["load_average_before"]) == 3
    configs = {"fedkseed": results_header.resolve("configs/quickstart.yaml", ["algorithm=fedkseed"])}
    document = results_header.end(header, configs, {"rows": [], "run_dir": str(tmp_path / "runs" / "a")})
    assert set(results_header.HEADER_FIELDS) <= set(document)
    assert document["resolved_configs"]["fedkseed"]["fedkseed"]["num_seeds"]  # the method's settings, every default
    results_header.write(tmp_path / "out.json", document, scratch=str(tmp_path))
    assert json.loads((tmp_path / "out.json").read_text())["run_dir"] == "<scratch>"
    assert results_header.relative(str(REPO / "runs" / "x")) == "runs/x"


def test_the_results_header_finds_the_run_directories_of_a_compare_result():
    from benchmarks import results_header

    document = {"runs": [{"algorithm": "fedmezo", "seed": 0, "run_dir": "runs/c/fedmezo-seed0"}]}
    assert results_header.run_dirs(document) == {"fedmezo-seed0": "runs/c/fedmezo-seed0"}
    assert results_header.run_dirs({"runs": {"frozen": {"run_dir": "runs/f"}}}) == {"frozen": "runs/f"}


def test_the_memory_claim_is_measured_against_backprop_fedavg_with_sgd_and_with_adamw():
    # FedMeZO's paper compares with backprop FedAvg using SGD; AdamW (two moments more) is measured beside it.
    for relative in ("client_memory.json", "reproduce/fedmezo-memory/results.json"):
        document = json.loads((REPO / "benchmarks" / "results" / relative).read_text())
        cases = {(case["algorithm"], case["mode"]): case for case in document["cases"]}
        for mode in ("lora", "full"):
            assert {"inference", "fedmezo", "fedavg-sgd", "fedavg-adamw"} <= {a for a, m in cases if m == mode}, relative
            batches = {(case["batch_size"], case["local_steps"], case["model"]) for (_, m), case in cases.items() if m == mode}
            assert len(batches) == 1, relative  # same model, batch and steps in every case of a mode
            for name, optimizer in (("fedavg-sgd", "sgd"), ("fedavg-adamw", "adamw")):
                config = document["resolved_configs"][f"{name} {mode}"]
                assert (config["algorithm"], config["trainable"]["mode"], config["fedavg"]["optimizer"]) == (
                    "fedavg", mode, optimizer), relative
            assert document["resolved_configs"][f"fedavg-sgd {mode}"]["fedavg"]["momentum"] == 0.0  # plain SGD, no state
