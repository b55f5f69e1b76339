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
from zofed.llm.views import LoraSettings, TrainableView, apply_lora, layer_index, trainable_view

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
