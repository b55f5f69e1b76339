import pytest
import torch

from zofed.errors import ZofedError
from zofed.llm import LoraSettings, apply_lora, layer_index, load_model, trainable_view
from zofed.llm import models


@pytest.fixture()
def tiny():
    return load_model("tiny-llama")


def test_tiny_llama_is_deterministic(tiny):
    again = load_model("tiny-llama")
    for (name, a), (_, b) in zip(tiny.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(a, b), name
    assert tiny.num_layers == 4 and tiny.tokenizer.pad_token_id is not None


def test_lora_view_is_ordered_live_and_restores(tiny):
    loaded = apply_lora(tiny, LoraSettings(r=4, alpha=8), seed=0)
    view = trainable_view(loaded, "lora")
    again = trainable_view(apply_lora(load_model("tiny-llama"), LoraSettings(r=4, alpha=8), seed=0), "lora")
    assert view.names == again.names and all(torch.equal(a, b) for a, b in zip(view.tensors, again.tensors))
    assert all("lora_" in n for n in view.names)
    assert set(view.blocks()) == {0, 1, 2, 3}
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4]])}
    with torch.inference_mode():
        before = loaded.model(**batch).logits.clone()
        saved = view.state_dict()
        for tensor in view.tensors:
            tensor.add_(0.5)
        changed = loaded.model(**batch).logits
        view.load_(saved)
        restored = loaded.model(**batch).logits
    assert not torch.allclose(before, changed)
    assert torch.equal(before, restored)
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in view.names}


def test_full_view_dedupes_tied_embeddings_and_filters_layers(tiny):
    view = trainable_view(tiny, "full")
    unique = {p.data_ptr(): p.numel() for p in tiny.model.parameters()}
    assert view.numel() == sum(unique.values())
    assert sum("embed_tokens" in n for n in view.names) == 1 and not any("lm_head" in n for n in view.names)
    only = trainable_view(tiny, "full", layers=[1, 3])
    assert set(only.layer_of) == {1, 3}
    assert {n for n, p in tiny.model.named_parameters() if p.requires_grad} == set(only.names)


def test_view_load_rejects_mismatched_weights(tiny):
    view = trainable_view(tiny, "full", layers=[0])
    weights = view.state_dict()
    with pytest.raises(ZofedError, match="missing"):
        view.load_({k: v for k, v in list(weights.items())[1:]})
    name = view.names[0]
    with pytest.raises(ZofedError, match="shape"):
        view.load_({**weights, name: torch.zeros(1)})


def test_layer_index():
    assert layer_index("base_model.model.model.layers.12.self_attn.q_proj.lora_A.default.weight") == 12
    assert layer_index("model.embed_tokens.weight") is None


@pytest.mark.parametrize("name, dtype, fragment", [("no-such-model", "fp32", "not found"), ("tiny-llama", "fp16", "dtype")])
def test_bad_model_requests(name, dtype, fragment):
    with pytest.raises(ZofedError, match=fragment):
        load_model(name, dtype)


def test_bf16_model(tiny):
    assert next(load_model("tiny-llama", "bf16").model.parameters()).dtype == torch.bfloat16


def test_interrupted_conversion_leaves_no_cache(tmp_path, monkeypatch):
    target = tmp_path / "models" / "x"

    def explode(staging):
        (staging / "half-written.safetensors").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models._cached(target, explode)
    assert not target.exists() and list((tmp_path / "models").iterdir()) == []
    models._cached(target, lambda staging: (staging / "ok").write_text("done"))
    assert (target / "ok").read_text() == "done"
    models._cached(target, lambda staging: pytest.fail("must not convert twice"))
