"""The real built-in model. Uses the default cache so the GGUF conversion is paid once per machine."""

import pytest
import torch

from zofed.data import Example, collate, encode_prompt, tokenize_example
from zofed.llm import load_model
from zofed.llm import models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m-instruct")


def test_cached_reload_does_not_touch_the_gguf(smollm2, monkeypatch):
    monkeypatch.setattr(models, "_convert_gguf_model", lambda staging: pytest.fail("converted again"))
    again = load_model("smollm2")
    assert again.num_layers == 30
    assert sum(p.numel() for p in again.model.parameters()) == 134_515_008


def test_loss_is_finite_and_generation_knows_paris(smollm2):
    tokenizer = smollm2.tokenizer
    batch = collate([tokenize_example(tokenizer, Example("What is the capital of France?", "Paris"), 64)], tokenizer.pad_token_id)
    with torch.inference_mode():
        loss = smollm2.model(**batch).loss
        assert torch.isfinite(loss)
        prompt = torch.tensor([encode_prompt(tokenizer, "What is the capital of France?", 64)])
        output = smollm2.model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, prompt.shape[1]:])
