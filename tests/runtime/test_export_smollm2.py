"""Export and generate on the real SmolLM2: the adapter names zofed's cached base and reloads with equal logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runtime.test_export import LOGIT_TOLERANCE, load_in_fresh_process, make_run, zofed_logits
from zofed.llm import cache_dir
from zofed.runtime.export import export_run
from zofed.runtime.generate import reply
from zofed.runtime.saved_run import load_run_model, open_run

pytestmark = pytest.mark.slow


def test_smollm2_adapter_reloads_from_the_cache_with_equal_logits(tmp_path):
    config = make_run(tmp_path, "model=smollm2-135m-instruct")
    out = tmp_path / "adapter"
    export_run(config.run_dir, out)
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base) == cache_dir() / "models" / "smollm2-135m-instruct"
    fresh = load_in_fresh_process(out, "peft", tmp_path)
    assert (fresh["logits"] - zofed_logits(config, "final", fresh["ids"])).abs().max() < LOGIT_TOLERANCE


def test_smollm2_generate_answers(tmp_path):
    config = make_run(tmp_path, "model=smollm2-135m-instruct", "data.system_prompt=Answer in one word.")
    loaded, view = load_run_model(*open_run(config.run_dir, "final"))
    # B = 0 is LoRA's untrained state, so the answer is the pretrained model's: it knows this one.
    for name, tensor in zip(view.names, view.tensors):
        if "lora_B" in name:
            tensor.zero_()
    answer = reply(loaded, config, [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=8)
    assert "Paris" in answer
