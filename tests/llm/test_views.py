import pytest
import torch

from zofed.errors import ZofedError
from zofed.llm import LoraSettings, TrainableView, apply_lora, layer_index, load_model, trainable_view

SETTINGS = LoraSettings(r=4, alpha=8)
BATCH = {"input_ids": torch.tensor([[1, 20, 300, 4000, 5]])}


@pytest.fixture()
def tiny():
    return load_model("tiny-llama")


@pytest.fixture()
def lora(tiny):
    return apply_lora(tiny, SETTINGS, seed=0)


def logits(loaded) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model(**BATCH).logits.clone()


def test_lora_init_is_seeded_and_leaves_the_global_rng_alone(lora):
    view = trainable_view(lora)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    same = trainable_view(apply_lora(load_model("tiny-llama"), SETTINGS, seed=0))
    assert torch.equal(torch.rand(3), expected)
    other = trainable_view(apply_lora(load_model("tiny-llama"), SETTINGS, seed=1))
    assert same.names == view.names == other.names
    assert all(torch.equal(a, b) for a, b in zip(view.tensors, same.tensors))
    lora_a = [i for i, name in enumerate(view.names) if "lora_A" in name]
    assert not any(torch.equal(view.tensors[i], other.tensors[i]) for i in lora_a)


def test_lora_view_order_layers_and_blocks(lora):
    view = trainable_view(lora)
    expected = [
        f"base_model.model.model.layers.{layer}.self_attn.{module}.lora_{ab}.default.weight"
        for layer in range(4)
        for module in ("q_proj", "v_proj")
        for ab in ("A", "B")
    ]
    assert list(view.names) == expected
    assert view.layer_of == tuple(layer for layer in range(4) for _ in range(4))
    assert view.blocks() == {layer: list(range(4 * layer, 4 * layer + 4)) for layer in range(4)}
    # r=4 on 64-wide q (64 out) and v (2 kv heads x 16 = 32 out): A is 4x64, B is out x 4.
    assert view.numel() == 4 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4)


def test_lora_view_is_live_and_load_restores_exactly(lora):
    view = trainable_view(lora)
    before, saved = logits(lora), view.state_dict()
    for tensor in view.tensors:
        tensor.add_(0.5)
    assert not torch.allclose(logits(lora), before)
    assert not torch.equal(view.tensors[0], saved[view.names[0]])  # state_dict is a copy, not an alias
    view.load_(saved)
    assert torch.equal(logits(lora), before)


def test_lora_requires_grad_only_on_the_view(lora):
    view = trainable_view(lora)
    flags = {name: param.requires_grad for name, param in lora.model.named_parameters()}
    assert {name for name, flag in flags.items() if flag} == set(view.names)
    # Gradients reach exactly the view's tensors.
    lora.model(**BATCH, labels=BATCH["input_ids"]).loss.backward()
    assert all(param.grad is not None for name, param in lora.model.named_parameters() if name in view.names)


def test_full_view_dedupes_tied_embeddings(tiny):
    view = trainable_view(tiny, "full")
    unique = {param.data_ptr(): param.numel() for param in tiny.model.parameters()}
    assert view.numel() == sum(unique.values())
    assert len({t.data_ptr() for t in view.tensors}) == len(view.tensors)
    assert sum("embed_tokens" in name for name in view.names) == 1
    assert not any("lm_head" in name for name in view.names)
    assert view.names[0] == "model.embed_tokens.weight" and view.layer_of[0] is None
    assert view.names[-1] == "model.norm.weight" and view.layer_of[-1] is None
    assert sorted(view.blocks()) == [0, 1, 2, 3]
    assert all(f".layers.{layer}." in view.names[i] for layer, idx in view.blocks().items() for i in idx)
    assert all(param.requires_grad for param in tiny.model.parameters())


def test_full_view_is_live(tiny):
    view = trainable_view(tiny, "full", layers=[2])
    before, saved = logits(tiny), view.state_dict()
    view.tensors[0].mul_(3.0)
    assert not torch.allclose(logits(tiny), before)
    view.load_(saved)
    assert torch.equal(logits(tiny), before)


def test_layers_filter(tiny):
    only = trainable_view(tiny, "full", layers=[3, 1])
    assert set(only.layer_of) == {1, 3} and set(only.blocks()) == {1, 3}
    assert {n for n, p in tiny.model.named_parameters() if p.requires_grad} == set(only.names)
    assert only.numel() == sum(p.numel() for n, p in tiny.model.named_parameters() if layer_index(n) in (1, 3))
    lora = apply_lora(tiny, SETTINGS, seed=0)
    lora_only = trainable_view(lora, "lora", layers=[0])
    assert set(lora_only.layer_of) == {0} and len(lora_only.names) == 4
    assert {n for n, p in lora.model.named_parameters() if p.requires_grad} == set(lora_only.names)


def test_full_view_of_a_lora_model_excludes_the_adapters(lora):
    view = trainable_view(lora, "full")
    assert not any("lora_" in name for name in view.names)
    assert not any(p.requires_grad for n, p in lora.model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("layers", [[4], [-1], []])
def test_bad_layers(tiny, layers):
    with pytest.raises(ZofedError, match=r"layers 0\.\.3"):
        trainable_view(tiny, "full", layers=layers)


def test_bad_modes(tiny):
    with pytest.raises(ZofedError, match="unknown trainable mode 'all'; use one of lora, full"):
        trainable_view(tiny, "all")
    with pytest.raises(ZofedError, match="no LoRA adapters; apply LoRA first"):
        trainable_view(tiny, "lora")


def test_state_dict_keeps_dtype():
    view = trainable_view(load_model("tiny-llama", "bf16"), "full", layers=[0])
    assert {t.dtype for t in view.state_dict().values()} == {torch.bfloat16}


def test_lora_adapters_of_a_bf16_model_are_float32():
    """LoRA's low-precision answer is a float32 trainable part (docs/directions.md): PEFT keeps the adapters of a
    bf16 base in float32, so every ZO pass and update on them is exact float32, and the base stays bf16."""
    loaded = apply_lora(load_model("tiny-llama", "bf16"), SETTINGS, seed=0)
    assert {t.dtype for t in trainable_view(loaded).tensors} == {torch.float32}
    assert {t.dtype for t in trainable_view(loaded, "full").tensors} == {torch.bfloat16}


def test_load_rejects_mismatched_weights_and_changes_nothing(tiny):
    view = trainable_view(tiny, "full", layers=[0])
    weights = view.state_dict()
    first = view.names[0]
    with pytest.raises(ZofedError, match="missing"):
        view.load_({k: v for k, v in weights.items() if k != first})
    with pytest.raises(ZofedError, match=r"unexpected \['model.norm.weight'\]"):
        view.load_({**weights, "model.norm.weight": torch.zeros(64)})
    changed = {k: v + 1 for k, v in weights.items()}
    with pytest.raises(ZofedError, match=f"'{view.names[-1]}' has shape"):
        view.load_({**changed, view.names[-1]: torch.zeros(1)})
    assert all(torch.equal(t, weights[n]) for n, t in zip(view.names, view.tensors))


def test_view_checks_its_own_lengths():
    with pytest.raises(ValueError):
        TrainableView(names=("a",), tensors=(), layer_of=(None,))


@pytest.mark.parametrize(
    "settings",
    [
        dict(r=0),
        dict(alpha=0),
        dict(dropout=1.0),
        dict(target_modules=()),
    ],
)
def test_bad_lora_settings(settings):
    with pytest.raises(ZofedError, match="bad LoRA settings"):
        LoraSettings(**settings)


def test_lora_target_typo(tiny):
    with pytest.raises(ZofedError, match=r"\['qproj'\] match no module"):
        apply_lora(tiny, LoraSettings(target_modules=("q_proj", "qproj")), seed=0)


@pytest.mark.parametrize(
    "name, layer",
    [
        ("base_model.model.model.layers.12.self_attn.q_proj.lora_A.default.weight", 12),
        ("model.layers.0.mlp.up_proj.weight", 0),
        ("model.embed_tokens.weight", None),
        ("model.norm.weight", None),
        ("lm_head.weight", None),
    ],
)
def test_layer_index(name, layer):
    assert layer_index(name) == layer


def test_lora_rank_above_the_targets_rank_is_refused_before_allocating(tiny):
    smallest = min(min(m.in_features, m.out_features) for name, m in tiny.model.named_modules()
                   if name.endswith(("q_proj", "v_proj")))
    with pytest.raises(ZofedError, match=rf"trainable.r=1000000000000 exceeds .*at most {smallest}$"):
        apply_lora(tiny, LoraSettings(r=10**12, target_modules=("q_proj", "v_proj")), seed=0)
