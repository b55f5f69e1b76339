"""LoRA through PEFT, and the ordered, named view of the tensors a method trains.

The view fixes names and order once at setup: tensor i has index i on every process, which is
what lets a (seed, i) pair name the same direction on a client and on the server.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
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


def apply_lora(loaded: LoadedModel, settings: LoraSettings, seed: int) -> LoadedModel:
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # LoRA A's random init, reproducible without touching the caller's RNG
        try:
            with warnings.catch_warnings():
                # PEFT 0.21 calls a transformers 5 API that warns of its own rename; nothing for users to act on.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = get_peft_model(loaded.model, config)
        except ValueError as error:
            raise ZofedError(
                f"LoRA target modules {list(settings.target_modules)} do not fit model '{loaded.name}': "
                f"{str(error).splitlines()[0]}; set trainable.target_modules"
            ) from None
    model.eval()
    return LoadedModel(model, loaded.tokenizer, loaded.name, loaded.num_layers, loaded.load_seconds)


def layer_index(param_name: str) -> int | None:
    match = _LAYER.search(param_name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class TrainableView:
    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]
    layer_of: tuple[int | None, ...]

    def blocks(self) -> dict[int, list[int]]:
        blocks: dict[int, list[int]] = {}
        for index, layer in enumerate(self.layer_of):
            if layer is not None:
                blocks.setdefault(layer, []).append(index)
        return blocks

    def numel(self) -> int:
        return sum(tensor.numel() for tensor in self.tensors)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in zip(self.names, self.tensors)}

    @torch.no_grad()
    def load_(self, weights: Mapping[str, torch.Tensor]) -> None:
        missing = [name for name in self.names if name not in weights]
        extra = [name for name in weights if name not in set(self.names)]
        if missing or extra:
            raise ZofedError(
                f"weights do not match the trainable tensors (missing {missing[:3]}, unexpected {extra[:3]}); "
                "load weights saved with the same model and trainable settings"
            )
        for name, tensor in zip(self.names, self.tensors):
            if weights[name].shape != tensor.shape:
                raise ZofedError(f"weight '{name}' has shape {tuple(weights[name].shape)}, expected {tuple(tensor.shape)}")
            tensor.copy_(weights[name])


def trainable_view(loaded: LoadedModel, mode: str = "lora", layers: Sequence[int] | None = None) -> TrainableView:
    model = loaded.model
    if mode == "lora":
        chosen = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
        if not chosen:
            raise ZofedError("trainable.mode=lora but the model has no LoRA adapters")
    elif mode == "full":
        chosen = [(n, p) for n, p in model.named_parameters() if "lora_" not in n]  # named_parameters dedupes tied weights
    else:
        raise ZofedError(f"unknown trainable mode '{mode}'; use lora or full")
    if layers is not None:
        bad = [layer for layer in layers if not 0 <= layer < loaded.num_layers]
        if bad:
            raise ZofedError(f"trainable.layers {bad} out of range; the model has layers 0..{loaded.num_layers - 1}")
        wanted = set(layers)
        chosen = [(n, p) for n, p in chosen if layer_index(n) in wanted]
    trainable_ids = {id(p) for _, p in chosen}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable_ids)
    return TrainableView(
        names=tuple(n for n, _ in chosen),
        tensors=tuple(p.data for _, p in chosen),
        layer_of=tuple(layer_index(n) for n, _ in chosen),
    )
