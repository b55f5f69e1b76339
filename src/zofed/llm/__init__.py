"""Hugging Face transformers + PEFT glue: models, tokenizers, LoRA, and the trainable view."""

from zofed.llm.models import (
    BUILTIN_MODELS,
    GGUF_CONFIG_KEYS,
    LoadedModel,
    base_model_hub_id,
    base_model_path,
    cache_dir,
    load_model,
    load_tokenizer,
)

# views.py imports peft (and with it torch and transformers): it loads when one of its names is first
# asked for, so `zofed list` can read BUILTIN_MODELS from this package without them.
_FROM_VIEWS = ("LoraSettings", "TrainableView", "apply_lora", "layer_index", "trainable_view")


def __getattr__(name: str):
    if name in _FROM_VIEWS:
        from zofed.llm import views

        return getattr(views, name)
    raise AttributeError(f"module 'zofed.llm' has no attribute '{name}'")


__all__ = [
    "BUILTIN_MODELS",
    "LoadedModel",
    "LoraSettings",
    "TrainableView",
    "apply_lora",
    "base_model_path",
    "cache_dir",
    "layer_index",
    "load_model",
    "load_tokenizer",
    "trainable_view",
]
