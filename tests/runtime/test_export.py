"""`zofed export` and `zofed generate`: the run's weights, read back by plain transformers/PEFT in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from tests.runtime.helpers import tiny_config
from zofed.cli import main
from zofed.config import RunConfig
from zofed.runtime.experiment import build_model
from zofed.runtime.export import export_run
from zofed.runtime.saved_run import load_run_model, open_run

# Float rounding of merging B@A into the base weight (or of a different but equal summation
# order in PEFT's forward); a wrong or missing weight moves logits by far more (checked below).
LOGIT_TOLERANCE = 1e-4

# Runs in a fresh interpreter that imports only transformers and PEFT, as a user of the export would.
LOAD_EXPORT = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out, text = sys.argv[1], sys.argv[2]
config = json.load(open(out + "/adapter_config.json")) if sys.argv[3] == "peft" else None
if config:
    from peft import PeftModel
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]), out)
else:
    model = AutoModelForCausalLM.from_pretrained(out)
ids = AutoTokenizer.from_pretrained(out)(text, return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model.eval()(ids).logits
torch.save({"ids": ids, "logits": logits, "zofed": any(name.startswith("zofed") for name in sys.modules)}, sys.argv[4])
"""
TEXT = "What is the capital of France? Paris."


def make_run(tmp_path: Path, *overrides: str, **sections) -> RunConfig:
    """A run directory as `zofed run` leaves it, with weights far from the initial ones (LoRA B is zero at init)."""
    config = tiny_config(tmp_path, "fedmezo", *overrides, **sections)
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    _, view = build_model(config)
    generator = torch.Generator().manual_seed(1)
    for name in ("final", "best"):
        weights = {key: tensor + 0.05 * torch.randn(tensor.shape, generator=generator) for key, tensor in view.state_dict().items()}
        save_file(weights, str(config.run_dir / f"{name}.safetensors"))
    return config


def zofed_logits(config: RunConfig, weights: str, ids: torch.Tensor) -> torch.Tensor:
    loaded, _ = load_run_model(*open_run(config.run_dir, weights))
    with torch.inference_mode():
        return loaded.model(ids).logits


def load_in_fresh_process(out: Path, format: str, tmp_path: Path) -> dict:
    result = tmp_path / "fresh.pt"
    subprocess.run([sys.executable, "-c", LOAD_EXPORT, str(out), TEXT, format, str(result)], check=True, timeout=300,
                   env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    return torch.load(result)


@pytest.mark.parametrize("mode, format, weights", [("lora", "peft", "final"), ("lora", "merged", "best"), ("full", "merged", "final")])
def test_export_loads_without_zofed_with_the_same_logits(tmp_path, mode, format, weights):
    trainable = {"mode": mode, "r": 4, "alpha": 8} | ({"layers": [1, 2]} if mode == "full" else {})
    config = make_run(tmp_path, trainable=trainable)
    out = tmp_path / "export"
    assert main(["export", str(config.run_dir), "--out", str(out), "--weights", weights, "--format", format]) == 0
    fresh = load_in_fresh_process(out, format, tmp_path)
    assert not fresh["zofed"]
    ours = zofed_logits(config, weights, fresh["ids"])
    assert torch.allclose(fresh["logits"], ours, atol=LOGIT_TOLERANCE)
    other = zofed_logits(config, "final" if weights == "best" else "best", fresh["ids"])
    assert (fresh["logits"] - other).abs().max() > 100 * LOGIT_TOLERANCE  # the tolerance tells the weights apart
    if format == "peft":
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert (out / "adapter_model.safetensors").is_file() and Path(adapter["base_model_name_or_path"]).is_dir()
    record = json.loads((out / "zofed_export.json").read_text())
    assert record["weights"] == weights and record["format"] == format


def test_default_format_follows_the_run(tmp_path):
    lora = make_run(tmp_path / "a")
    assert export_run(lora.run_dir, tmp_path / "a-out")["format"] == "peft"
    full = make_run(tmp_path / "b", trainable={"mode": "full", "layers": [0]})
    assert export_run(full.run_dir, tmp_path / "b-out")["format"] == "merged"
    assert (tmp_path / "b-out" / "model.safetensors").is_file()


@pytest.mark.parametrize("case, fragment", [
    ("non-empty out", "already exists and is not empty"),
    ("full as peft", "--format merged"),
    ("no run", "not a run directory"),
    ("no best", "no best weights"),
])
def test_export_refusals_are_one_line_and_write_nothing(tmp_path, capsys, case, fragment):
    config = make_run(tmp_path, trainable={"mode": "full", "layers": [0]} if case == "full as peft" else {"mode": "lora"})
    out = tmp_path / "out"
    args = ["export", str(config.run_dir), "--out", str(out)]
    if case == "non-empty out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if case == "full as peft":
        args += ["--format", "peft"]
    if case == "no run":
        args[1] = str(tmp_path / "nowhere")
    if case == "no best":
        (config.run_dir / "best.safetensors").unlink()
        args += ["--weights", "best"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and fragment in error[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["runs"] + (["out"] if case == "non-empty out" else []))
    if case == "non-empty out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_export_into_an_empty_directory(tmp_path):
    config = make_run(tmp_path)
    (tmp_path / "out").mkdir()
    export_run(config.run_dir, tmp_path / "out")
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_exports_name_the_hub_model_and_no_gguf_internal_name(tmp_path, monkeypatch):
    import zofed.runtime.export as export
    from zofed.llm import base_model_hub_id

    assert base_model_hub_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_hub_id("smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct" and base_model_hub_id("tiny-llama") is None
    # tiny-llama stands in for the built-in SmolLM2: a hub id, and the name its GGUF file puts in the config
    monkeypatch.setattr(export, "base_model_hub_id", lambda name: "HuggingFaceTB/SmolLM2-135M-Instruct")
    load = export.load_run_model

    def load_as_from_gguf(*args):
        loaded, view = load(*args)
        loaded.model.config._model_name_or_path = "Smollm2 135M 8k Lc100K Mix1 Ep2"
        return loaded, view

    monkeypatch.setattr(export, "load_run_model", load_as_from_gguf)
    config = make_run(tmp_path)
    export_run(config.run_dir, tmp_path / "adapter", format="peft")
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n" in card and str(Path.home()) not in card.split("---")[1]
    record = json.loads((tmp_path / "adapter" / "zofed_export.json").read_text())
    assert record["base_model_hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # the adapter still loads its base from the exact weights the run trained on
    assert Path(json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]).is_dir()
    export_run(config.run_dir, tmp_path / "merged", format="merged")
    assert "Smollm2 135M" not in (tmp_path / "merged" / "config.json").read_text()
