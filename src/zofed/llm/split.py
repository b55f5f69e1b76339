"""Split forward: run a decoder-only causal LM up to layer s once, then the rest as often as needed.

`prefix(batch, s)` runs the model on the batch and stops right after layer s − 1, keeping that
layer's output (the cache). `suffix_loss(cache)` runs layers [s, L) + final norm + head + the
model's own loss from the cache. Together they give exactly what `model(**batch).loss` gives
(tested to 0 / 1e-5 in fp32 for Llama, Qwen2 and GPT-2, padded batches included), for a fraction
of the layers when block 2 (layers >= s and the head) is all that changed.

How, without any family-specific code: the suffix pass calls the model's own forward with the
layers [0, s) temporarily swapped for stand-ins that return the cached output. Everything the
later layers need besides the hidden state — the attention mask (padding, causal, sliding
window), position ids and rotary embeddings, GPT-2's learned positions — is therefore computed
by the model's own code exactly as in a full forward, with layer indices intact (Qwen2 picks
each layer's mask by its index, so slicing the layer list would give later layers the wrong
mask). The model recomputes the embedding lookup, mask and rotary tables each suffix pass: a
gather and a few small tensors, negligible next to one transformer layer, and it is what keeps
the split exact for every family. (Slicing the layer list and passing the cache as
`inputs_embeds` is exact for Llama but not for GPT-2, which adds position embeddings to
`inputs_embeds`, nor for mixed-mask Qwen2.)

The prefix pass stops with an exception raised by a forward hook on layer s − 1, so neither the
remaining layers nor the head (as costly as several layers in small models with big
vocabularies) run.

The layer list is found generically: the one `nn.ModuleList` whose length is the config's
`num_hidden_layers` (Llama/SmolLM2/Qwen2/Mistral `model.layers`, GPT-2 `transformer.h`, through
a PEFT wrapper too). A model with none or several such lists, or an encoder-decoder, cannot be
split and raises a ZofedError.

Each trainable tensor gets a position in the forward (`tensor_layers`): i for a tensor of layer
i; −1 for one used before the layers (a module of the layer list's parent registered before the
list: embeddings, GPT-2's position embeddings); `num_layers` for one used only after them (final
norm, an untied head). A head tied to the input embeddings is the same tensor, used before the
layers, so it is −1: perturbing it changes the cache.

`lowered(layers, dtype)` keeps chosen layers in a lower precision for a while (ZorBA's inactive
blocks): their parameters and buffers are cast in place, one layer at a time, and hooks cast what
flows in to the layer's dtype and what flows out back to the model's, so each lowered layer is a
low-precision island with a full-precision interface and no other module needs to know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from zofed.errors import ZofedError
from zofed.llm.models import example_losses

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class SplitCache:
    """The batch and the output of layer `split − 1` on it, as the model produced it."""

    batch: Batch
    split: int
    output: Any  # a layer's output object, whatever form the family returns (a tensor in transformers 5)


class _StopForward(Exception):
    pass


class _Replay(nn.Module):
    """Stands in for a layer below the split: returns the cached output of layer s − 1.

    Every stand-in returns it, so the model's loop hands it on unchanged to layer s. Attributes a
    model's loop might read from a layer (e.g. `attention_type`) come from the layer it replaces.
    """

    def __init__(self, replaced: nn.Module, output: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_replaced", replaced)  # not registered: no parameters of its own
        object.__setattr__(self, "_output", output)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._output

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_replaced"), name)


class ModelSplit:
    """The split forward of one model; `tensors` are the trainable tensors in view order.

    Construction does no work, so a runtime can hand one to every client; the layer list is
    looked up (and a model that cannot be split rejected) on first use.
    """

    def __init__(self, model: nn.Module, tensors: Sequence[torch.Tensor] = (),
                 per_example: Callable[[torch.Tensor], Any] | None = None) -> None:
        self.model = model
        self._tensors = tuple(tensors)
        # privacy.dp: step: suffix_loss returns per_example(each example's loss) instead of the batch's float
        self.per_example = per_example

    @cached_property
    def _layers(self) -> tuple[nn.Module, str, nn.ModuleList]:
        """(parent module, attribute name, layer list)."""
        config = getattr(self.model, "config", None)
        name = type(self.model).__name__
        if config is None or getattr(config, "is_encoder_decoder", False):
            raise ZofedError(f"model {name} is not a decoder-only transformers model, so it cannot be split; "
                             "use a decoder-only causal LM (Llama, Qwen2, GPT-2 style)")
        count = getattr(config, "num_hidden_layers", None)
        found = [
            (parent, child_name, child)
            for parent in self.model.modules()
            for child_name, child in parent.named_children()
            if isinstance(child, nn.ModuleList) and count and len(child) == count
        ]
        if len(found) != 1:
            raise ZofedError(
                f"model {name} has {len(found)} module lists of num_hidden_layers={count} layers, so its layer "
                "list is ambiguous and it cannot be split; use a decoder-only model with one layer list"
            )
        return found[0]

    @property
    def layer_modules(self) -> nn.ModuleList:
        """The model's transformer layers in forward order (its own list: `model.layers`, GPT-2's `h`)."""
        return self._layers[2]

    @property
    def num_layers(self) -> int:
        return len(self.layer_modules)

    @cached_property
    def tensor_layers(self) -> tuple[int, ...]:
        """Per trainable tensor: its layer, −1 before the layers (embeddings), num_layers after (norm, head)."""
        parent, list_name, layers = self._layers
        order = list(parent._modules)
        position_of = {id(inner): index for index, layer in enumerate(layers) for inner in layer.modules()}
        for child in order[: order.index(list_name)]:
            for inner in parent._modules[child].modules():
                position_of.setdefault(id(inner), -1)
        owners: dict[tuple[int, torch.Size], list[int]] = {}
        for module in self.model.modules():
            for param in module.parameters(recurse=False):
                key = (param.data_ptr(), param.shape)
                owners.setdefault(key, []).append(position_of.get(id(module), len(layers)))
        positions = []
        for index, tensor in enumerate(self._tensors):
            found = owners.get((tensor.data_ptr(), tensor.shape))
            if found is None:
                raise ZofedError(f"trainable tensor {index} is not a parameter of the model; build the view from it")
            positions.append(min(found))  # a tied tensor counts where it is first used
        return tuple(positions)

    @contextmanager
    def lowered(self, layers: Iterable[int], dtype: torch.dtype, keep_master: bool = True) -> Iterator[None]:
        """Layers `layers` in `dtype` inside the block, as they were after it.

        With `keep_master` the original tensors are kept and put back (exact restore: the local
        runtime shares one model between all simulated clients); without, nothing is kept and the
        model no longer views its weight file, so the memory really falls (a client process of its
        own), and leaving the block casts back up.
        The trainable view's tensors follow their parameters, so a lowered layer's full-precision
        storage is referenced by nothing and freed.
        """
        module_list = self.layer_modules
        chosen = sorted(set(layers))
        bad = [layer for layer in chosen if not 0 <= layer < len(module_list)]
        if bad:
            raise ZofedError(f"layers {bad} are outside 0..{len(module_list) - 1}; pick layers of this model")
        high = next(self.model.parameters()).dtype
        holders_of: dict[int, list[torch.Tensor]] = {}
        for tensor in self._tensors:
            holders_of.setdefault(tensor.data_ptr(), []).append(tensor)
        # (the tensor and every view tensor on its storage, its original or None when not kept)
        moved: list[tuple[list[torch.Tensor], torch.Tensor | None]] = []
        hooks = []
        for index in chosen:
            layer = module_list[index]
            for tensor in [*layer.parameters(), *layer.buffers()]:
                if not tensor.is_floating_point() or tensor.dtype == dtype:
                    continue
                holders = [tensor, *holders_of.get(tensor.data_ptr(), [])]
                original = tensor.data
                low = original.to(dtype)
                for holder in holders:
                    holder.data = low
                moved.append((holders, original if keep_master else None))
                del original
            hooks.append(layer.register_forward_pre_hook(_cast_inputs(dtype), with_kwargs=True))
            hooks.append(layer.register_forward_hook(_cast_output(high)))
        if not keep_master:
            # transformers memory-maps the weight file: the lowered layers' full-precision pages stay
            # resident while any tensor still views the file, so the rest is copied out of it too.
            for tensor in [*self.model.parameters(), *self.model.buffers()]:
                if tensor.is_floating_point() and tensor.dtype != dtype:
                    copy = tensor.data.clone()
                    for holder in [tensor, *holders_of.get(tensor.data_ptr(), [])]:
                        holder.data = copy
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            for holders, original in moved:
                restored = holders[0].data.to(high) if original is None else original
                for holder in holders:
                    holder.data = restored

    def check_split(self, split: int) -> None:
        if not 1 <= split <= self.num_layers:
            raise ZofedError(
                f"split layer {split} is outside 1..{self.num_layers} for this {self.num_layers}-layer model; "
                f"pick a layer in that range"
            )

    @torch.inference_mode()
    def prefix(self, batch: Batch, split: int) -> SplitCache:
        """Embeddings + layers [0, split) on `batch`; the output of layer split − 1, kept."""
        self.check_split(split)
        if self.per_example is not None and batch["labels"].shape[0] == 0:
            return SplitCache(batch, split, None)  # an empty Poisson sample: no forward, no loss (suffix_loss)
        captured: list[Any] = []

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output)
            raise _StopForward

        handle = self.layer_modules[split - 1].register_forward_hook(stop)
        try:
            self.model(**batch, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ZofedError(f"model {type(self.model).__name__} never ran layer {split - 1}; it cannot be split")
        return SplitCache(batch, split, captured[0])

    @torch.inference_mode()
    def suffix_output(self, cache: SplitCache) -> Any:
        """The model's output (loss, logits) with layers [0, split) replaced by the cache."""
        layers = self.layer_modules
        originals = [layers[i] for i in range(cache.split)]
        try:
            for i, original in enumerate(originals):
                layers[i] = _Replay(original, cache.output)
            return self.model(**cache.batch, use_cache=False)
        finally:
            for i, original in enumerate(originals):
                layers[i] = original

    def suffix_loss(self, cache: SplitCache) -> Any:
        if self.per_example is not None and cache.batch["labels"].shape[0] == 0:
            return self.per_example(torch.zeros(0, dtype=torch.float64))
        output = self.suffix_output(cache)
        if self.per_example is not None:
            return self.per_example(example_losses(output.logits, cache.batch["labels"]))
        return float(output.loss)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(item, dtype) for item in value)
    return value


def _cast_inputs(dtype: torch.dtype):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _cast(args, dtype), {key: _cast(value, dtype) for key, value in kwargs.items()}

    return hook


def _cast_output(dtype: torch.dtype):
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        return _cast(output, dtype)

    return hook
