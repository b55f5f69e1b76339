"""The scale ladder: architectures of larger models as config dicts, built with random weights.

Memory and step time depend on a model's shapes, not on its weights, so a ladder of published
architectures measures how zofed scales without downloading anything. Each entry holds the
values of the model's published `config.json` that fix its shapes and its forward's cost (layer
widths, heads, vocabulary, tied embeddings, attention bias); values that only change what the
weights mean (rope scaling, token ids) are left at the library's defaults. Sources: the
models' Hugging Face configs (SmolLM2-360M/1.7B-Instruct, Llama-3.2-1B/3B, Llama-3.1-8B,
Qwen2.5-7B), as quoted in public repositories.

`model=shape:llama-3.2-1b` loads one anywhere a model name is accepted (with the built-in
tokenizer, whose ids all fall inside every ladder vocabulary); `build_shape` builds one without
any tokenizer, which is what the GPU check uses on machines without GGUF support.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zofed.errors import ZofedError

if TYPE_CHECKING:  # torch and transformers are imported where a shape is built: `zofed list` reads SHAPES alone
    import torch
    from transformers import PretrainedConfig

SHAPE_PREFIX = "shape:"
SHAPE_SEED = 0

_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0}
_SMOLLM2 = {"model_type": "llama", "vocab_size": 49152, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}

SHAPES: dict[str, dict] = {
    # For tests and CI: the ladder's code path in seconds (SmolLM2's vocabulary, so its tokenizer fits).
    "tiny": {**_SMOLLM2, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    "smollm2-135m": {**_SMOLLM2, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "rope_theta": 100000.0},
    "smollm2-360m": {**_SMOLLM2, "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                     "num_attention_heads": 15, "num_key_value_heads": 5, "head_dim": 64, "rope_theta": 100000.0},
    "smollm2-1.7b": {**_SMOLLM2, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                     "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 64, "rope_theta": 130000.0},
    "llama-3.2-1b": {**_LLAMA3, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True},
    "llama-3.2-3b": {**_LLAMA3, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                     "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True},
    "llama-3.1-8b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False},
    "qwen2.5-7b": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                   "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                   "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False},
}
LADDER = ("smollm2-360m", "smollm2-1.7b", "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "qwen2.5-7b")


def shape_name(model: str) -> str | None:
    """The shape a model name asks for (`shape:NAME`), or None for any other model name."""
    if not model.startswith(SHAPE_PREFIX):
        return None
    name = model[len(SHAPE_PREFIX):]
    if name not in SHAPES:
        raise ZofedError(f"unknown model shape '{name}'; use one of: {', '.join(SHAPES)}")
    return name


def shape_config(name: str, **overrides) -> PretrainedConfig:
    from transformers import AutoConfig

    values = {**SHAPES[name], **overrides}
    return AutoConfig.for_model(values.pop("model_type"), **values)


def build_shape(name: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
                **overrides) -> torch.nn.Module:
    """A causal LM of shape `name` in eval mode, with fixed random weights, built directly on `device`.

    Built on the device in its dtype, so an 8B shape never passes through host memory in fp32;
    the weights are then the same in every process on one device, not across devices (they are
    stand-ins for timing and memory, not a model to compare). `dtype` None: float32.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if dtype is None else dtype
    if name not in SHAPES:
        raise ZofedError(f"unknown model shape '{name}'; use one of: {', '.join(SHAPES)}")
    device = torch.device(device)
    config = shape_config(name, use_cache=False, **overrides)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(SHAPE_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    return model


def shape_parameters(name: str) -> int:
    """Parameter count of a shape, without building it (on the meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape_config(name))
    return sum(param.numel() for param in model.parameters())
