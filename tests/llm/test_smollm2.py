"""The real built-in model, on the real cache (see conftest.py): the GGUF conversion is paid once per machine."""

from collections.abc import Iterator

import pytest
import torch

from zofed.llm import LoadedModel, load_model
from zofed.llm import models

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def real_cache_env(real_cache) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOFED_CACHE", str(real_cache))
        yield


@pytest.fixture(scope="module")
def smollm2(real_cache_env) -> LoadedModel:
    return load_model("smollm2-135m-instruct")  # converts from the GGUF if this machine never did


def test_converted_once_into_a_complete_cache(smollm2, real_cache):
    target = real_cache / "models" / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in target.iterdir()}
    assert "quantization_config" not in (target / "config.json").read_text()
    assert not list(target.parent.glob(".smollm2-135m-instruct.*.tmp"))  # no staging left behind


def test_cached_reload_does_not_touch_the_gguf(smollm2, monkeypatch):
    monkeypatch.setattr(models, "_gguf_location", lambda: pytest.fail("went back to the GGUF"))
    again = load_model("smollm2")  # the alias
    assert again.name == "smollm2-135m-instruct" and again.num_layers == 30
    assert sum(p.numel() for p in again.model.parameters()) == 134_515_008
    assert again.model.lm_head.weight is again.model.model.embed_tokens.weight
    reference = dict(smollm2.model.named_parameters())
    assert all(torch.equal(param, reference[name]) for name, param in again.model.named_parameters())


def test_chat_forward_gives_a_finite_loss(smollm2):
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Paris."}]
    ids = smollm2.tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        loss = smollm2.model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss) and 0 < loss.item() < 10


def test_greedy_generation_knows_paris(smollm2):
    tokenizer = smollm2.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        output = smollm2.model.generate(**prompt, max_new_tokens=16, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
