"""LoRA through PEFT, and the ordered, named view of the tensors a method trains.

The view fixes names and order once at setup: tensor i has index i on every process, which is
what lets a (seed, i) pair name the same direction on a client and on the server.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model

from zofed.errors import ZofedError
from zofed.llm.models import LoadedModel

_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0 or not self.target_modules:
            raise ZofedError(
                f"bad LoRA settings (r={self.r}, alpha={self.alpha}, dropout={self.dropout}, "
                f"target_modules={list(self.target_modules)}); use r >= 1, alpha > 0, 0 <= dropout < 1 "
                "and at least one target module"
            )


def apply_lora(loaded: LoadedModel, settings: LoraSettings, seed: int) -> LoadedModel:
    """`loaded` with PEFT LoRA adapters; the base model is wrapped in place, so use only the result."""
    _check_targets(loaded, settings.target_modules)
    _check_rank(loaded, settings)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    # LoRA A's random init comes from the global RNG: seed it inside a fork so the init is
    # reproducible and the caller's RNG stream is left as it was.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            with warnings.catch_warnings():
                # PEFT 0.21 calls a transformers 5 API that warns of its own rename; nothing for users to act on.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = get_peft_model(loaded.model, config)
        except ValueError as error:
            raise ZofedError(
                f"LoRA target modules {list(settings.target_modules)} do not fit model '{loaded.name}': "
                f"{str(error).splitlines()[0].rstrip('.')}; set trainable.target_modules"
            ) from None
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.name, loaded.num_layers, loaded.load_seconds)


def _check_targets(loaded: LoadedModel, targets: Sequence[str]) -> None:
    # PEFT silently skips a target that matches nothing as long as another one matches, so a
    # typo would quietly train fewer tensors than asked for.
    module_names = {name.rsplit(".", 1)[-1] for name, _ in loaded.model.named_modules()}
    unknown = [target for target in targets if target not in module_names]
    if unknown:
        raise ZofedError(
            f"LoRA target modules {unknown} match no module of model '{loaded.name}'; "
            "set trainable.target_modules to module names such as q_proj, v_proj"
        )


def _check_rank(loaded: LoadedModel, settings: LoraSettings) -> None:
    # A rank above a target's smaller side adds nothing a full update lacks, and a mistyped one
    # (r=10^12) would ask the allocator for terabytes before PEFT could object.
    sides = [min(module.in_features, module.out_features) for name, module in loaded.model.named_modules()
             if name.rsplit(".", 1)[-1] in settings.target_modules and hasattr(module, "in_features")]
    if sides and settings.r > min(sides):
        raise ZofedError(
            f"trainable.r={settings.r} exceeds the rank of the smallest LoRA target ({min(sides)}); "
            f"set trainable.r to at most {min(sides)}"
        )


def layer_index(param_name: str) -> int | None:
    """The transformer layer a parameter belongs to (`...layers.{i}...`), None outside the layers."""
    match = _LAYER.search(param_name)
    return int(match.group(1)) if match else None


# eq=False: the generated __eq__ would compare tensors element-wise and fail; views compare by identity.
@dataclass(frozen=True, eq=False)
class TrainableView:
    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]
    layer_of: tuple[int | None, ...]

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.tensors) == len(self.layer_of):
            raise ValueError("names, tensors and layer_of must have one entry per tensor")

    def blocks(self) -> dict[int, list[int]]:
        """Transformer layer -> indices of its tensors (embeddings, final norm and head belong to none)."""
        blocks: dict[int, list[int]] = {}
        for index, layer in enumerate(self.layer_of):
            if layer is not None:
                blocks.setdefault(layer, []).append(index)
        return blocks

    def numel(self) -> int:
        return sum(tensor.numel() for tensor in self.tensors)

    def state_dict(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """A copy of the trainable tensors on `device`: the host by default (exports, tests); the
        server keeps its state on the model's device, so its aggregation and replay run there."""
        return {name: tensor.detach().to(device, copy=True) for name, tensor in zip(self.names, self.tensors)}

    @torch.no_grad()
    def load_(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Copy `weights` into the live tensors; the names must match exactly, shapes too."""
        known = set(self.names)
        missing = [name for name in self.names if name not in weights]
        extra = [name for name in weights if name not in known]
        if missing or extra:
            raise ZofedError(
                f"weights do not match the trainable tensors (missing {missing[:3]}, unexpected {extra[:3]}); "
                "load weights saved with the same model and trainable settings"
            )
        for name, tensor in zip(self.names, self.tensors):
            if weights[name].shape != tensor.shape:
                raise ZofedError(
                    f"weight '{name}' has shape {tuple(weights[name].shape)}, expected {tuple(tensor.shape)}; "
                    "load weights saved with the same model and trainable settings"
                )
        # Copy only after every check, so a rejected load leaves the model untouched.
        for name, tensor in zip(self.names, self.tensors):
            tensor.copy_(weights[name])


Named = list[tuple[str, torch.nn.Parameter]]


def _lora_parameters(model: torch.nn.Module) -> Named:
    chosen = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    if not chosen:
        raise ZofedError("trainable mode lora but the model has no LoRA adapters; apply LoRA first or use mode full")
    return chosen


def _base_parameters(model: torch.nn.Module) -> Named:
    # named_parameters() yields a tied tensor once (SmolLM2's lm_head is embed_tokens), so each
    # weight is perturbed once, not twice.
    return [(n, p) for n, p in model.named_parameters() if "lora_" not in n]


SELECTORS: dict[str, Callable[[torch.nn.Module], Named]] = {"lora": _lora_parameters, "full": _base_parameters}


def trainable_view(loaded: LoadedModel, mode: str = "lora", layers: Sequence[int] | None = None) -> TrainableView:
    """The ordered tensors a method trains; marks them (and only them) as requiring grad."""
    if mode not in SELECTORS:
        raise ZofedError(f"unknown trainable mode '{mode}'; use one of {', '.join(SELECTORS)}")
    chosen = SELECTORS[mode](loaded.model)
    if layers is not None:
        chosen = _in_layers(chosen, layers, loaded.num_layers)
    trainable_ids = {id(p) for _, p in chosen}
    for param in loaded.model.parameters():
        param.requires_grad_(id(param) in trainable_ids)
    return TrainableView(
        names=tuple(n for n, _ in chosen),
        tensors=tuple(p.data for _, p in chosen),
        layer_of=tuple(layer_index(n) for n, _ in chosen),
    )


def _in_layers(chosen: Named, layers: Sequence[int], num_layers: int) -> Named:
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad or not layers:
        raise ZofedError(
            f"trainable layers {list(layers)} are not a non-empty subset of the model's layers 0..{num_layers - 1}; "
            "pick layer indices in that range"
        )
    wanted = set(layers)
    return [(n, p) for n, p in chosen if layer_index(n) in wanted]
