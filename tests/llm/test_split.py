"""The split forward equals the full forward, for each supported family, padded batches included."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from zofed.errors import ZofedError
from zofed.llm.split import ModelSplit

VOCAB, LAYERS = 96, 4


def llama() -> torch.nn.Module:
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                        pad_token_id=0))


def qwen2() -> torch.nn.Module:
    # Sliding-window attention on the upper layers: each layer's mask depends on its index.
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                        num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                        sliding_window=3, max_window_layers=2, tie_word_embeddings=False,
                                        pad_token_id=0))


def gpt2() -> torch.nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=64))


FAMILIES = {"llama": llama, "qwen2": qwen2, "gpt2": gpt2}


def build(family: str, lora: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = FAMILIES[family]()
    if lora:
        targets = ["c_attn"] if family == "gpt2" else ["q_proj", "v_proj"]
        config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                            fan_in_fan_out=family == "gpt2")  # GPT-2's Conv1D stores weights transposed
        model = get_peft_model(model, config)
    return model.eval()


def padded_batch(side: str) -> dict[str, torch.Tensor]:
    """Three sequences of lengths 9, 6, 4 padded to 9 on `side`; labels mask padding and the first 2 tokens."""
    generator = torch.Generator().manual_seed(1)
    lengths, width = [9, 6, 4], 9
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        span = slice(0, length) if side == "right" else slice(width - length, width)
        input_ids[row, span] = torch.randint(1, VOCAB, (length,), generator=generator)
        mask[row, span] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_split_forward_equals_the_full_forward(family, side, lora):
    model, batch = build(family, lora), padded_batch(side)
    with torch.inference_mode():
        full = model(**batch, use_cache=False)
    split = ModelSplit(model)
    assert split.num_layers == LAYERS
    for s in range(1, LAYERS + 1):
        cache = split.prefix(batch, s)
        out = split.suffix_output(cache)
        assert (out.logits - full.logits).abs().max().item() <= 1e-5
        assert abs(split.suffix_loss(cache) - float(full.loss)) <= 1e-5
    # the model is left whole: a full forward after the split passes is unchanged
    with torch.inference_mode():
        assert torch.equal(model(**batch, use_cache=False).logits, full.logits)


def test_the_cache_is_reused_and_the_suffix_sees_changes_above_the_split():
    model, batch = build("llama", lora=True), padded_batch("right")
    split = ModelSplit(model)
    cache = split.prefix(batch, 2)
    upper = model.base_model.model.model.layers[3].self_attn.v_proj.lora_B["default"].weight
    lower = model.base_model.model.model.layers[0].self_attn.v_proj.lora_B["default"].weight
    with torch.no_grad():
        upper.add_(0.5)
        changed = split.suffix_loss(cache)
        with torch.inference_mode():
            assert abs(changed - float(model(**batch, use_cache=False).loss)) <= 1e-5
        lower.add_(0.5)  # below the split: the cached pass does not see it, by design
        assert split.suffix_loss(cache) == changed


def test_prefix_stops_at_the_split_layer():
    model, batch = build("llama"), padded_batch("right")
    ran = []
    for index, layer in enumerate(model.model.layers):
        layer.register_forward_hook(lambda module, args, output, index=index: ran.append(index))
    model.lm_head.register_forward_hook(lambda module, args, output: ran.append("head"))
    cache = ModelSplit(model).prefix(batch, 2)
    assert ran == [0, 1]
    ran.clear()
    ModelSplit(model).suffix_loss(cache)
    assert ran == [2, 3, "head"]


def test_tensor_layers_place_embeddings_before_and_an_untied_head_after():
    llama_model, qwen_model, gpt_model = build("llama"), build("qwen2"), build("gpt2")
    for model in (llama_model, qwen_model, gpt_model):
        named = list(model.named_parameters())
        positions = dict(zip((n for n, _ in named), ModelSplit(model, [p.data for _, p in named]).tensor_layers))
        for name, position in positions.items():
            if ".layers." in name or ".h." in name:
                assert position == int(name.split(".")[2]), name
            elif "embed_tokens" in name or ".wte." in name or ".wpe." in name:
                assert position == -1, name  # llama's tied head is this same tensor
            else:
                assert position == LAYERS, name  # final norm, qwen2's untied head
    assert "lm_head.weight" in dict(qwen_model.named_parameters())


def test_tensor_layers_of_lora_adapters():
    model = build("qwen2", lora=True)
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    positions = ModelSplit(model, [p.data for _, p in named]).tensor_layers
    assert positions == tuple(int(n.split(".layers.")[1].split(".")[0]) for n, _ in named)


def test_models_that_cannot_be_split_are_rejected():
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=16, d_ff=32, num_layers=2, num_heads=2, d_kv=8))
    with pytest.raises(ZofedError, match="not a decoder-only"):
        ModelSplit(t5).num_layers
    with pytest.raises(ZofedError, match="not a decoder-only"):
        ModelSplit(torch.nn.Linear(2, 2)).num_layers
    model = build("llama")
    model.model.extra = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(LAYERS))
    with pytest.raises(ZofedError, match="ambiguous"):
        ModelSplit(model).num_layers
    with pytest.raises(ZofedError, match="outside 1..4"):
        ModelSplit(build("llama")).prefix(padded_batch("right"), 0)
    with pytest.raises(ZofedError, match="not a parameter"):
        ModelSplit(build("llama"), [torch.zeros(3)]).tensor_layers


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lowered_layers_run_in_low_precision_and_come_back_exactly(family):
    model = build(family, lora=True)
    trainable = tuple(p.data for n, p in model.named_parameters() if "lora_" in n)
    split = ModelSplit(model, trainable)
    batch = padded_batch("right")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.inference_mode():
        full = model(**batch, use_cache=False).loss
    with split.lowered([0, 2], torch.bfloat16):
        layers = split.layer_modules
        assert {p.dtype for p in layers[0].parameters()} == {torch.bfloat16}
        assert {p.dtype for p in layers[1].parameters()} == {torch.float32}
        lowered_views = [t for t, at in zip(trainable, split.tensor_layers) if at in (0, 2)]
        assert lowered_views and all(t.dtype == torch.bfloat16 for t in lowered_views)  # views follow, nothing pins fp32
        with torch.inference_mode():
            mixed = model(**batch, use_cache=False).loss
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert abs(float(mixed) - float(full)) < 0.05 * abs(float(full))  # bf16 rounding, not a different model
    assert float(mixed) != float(full)
    after = model.state_dict()
    assert all(after[name].dtype == tensor.dtype and torch.equal(after[name], tensor) for name, tensor in before.items())


def test_lowered_without_masters_frees_full_precision_and_casts_back_up():
    model = build("llama")
    trainable = tuple(p.data for p in model.parameters())
    split = ModelSplit(model, trainable)
    layer = split.layer_modules[1]
    with split.lowered([1], torch.bfloat16, keep_master=False):
        assert all(p.dtype == torch.bfloat16 for p in layer.parameters())
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    with pytest.raises(ZofedError, match="outside"):
        with split.lowered([LAYERS], torch.bfloat16):
            pass
