"""Transforms, `chain`, the settings object and the ServerState round trip (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from zofed.lazy import lazy_import

torch = lazy_import("torch")  # imported on first use: the registry reads this module without torch

Params = Mapping[str, "torch.Tensor"]  # a string: naming the type must not import torch
JsonValue = Union[str, int, float, bool, None, list, dict]
BUFFER_PREFIX = "serveropt/"
INFO_KEY = "serveropt"


@dataclass(frozen=True)
class OptState:
    """Tensors (slot/param-name keyed, float32) and JSON info (e.g. the step count)."""

    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    info: Mapping[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Transform:
    init: Callable[[Params], OptState]
    update: Callable[[Params, OptState, Params], tuple[dict[str, torch.Tensor], OptState]]


def _zeros(params: Params, slot: str) -> dict[str, torch.Tensor]:
    return {f"{slot}/{name}": torch.zeros_like(tensor, dtype=torch.float32) for name, tensor in params.items()}


def _slot(state: OptState, slot: str, name: str) -> torch.Tensor:
    # cloned so an update never writes into the state it was given (state in, new state out)
    return state.tensors[f"{slot}/{name}"].clone()


def scale(factor: float) -> Transform:
    """updates = factor · grads (stateless)."""

    def update(grads, state, params=None):
        return {name: grad.float() * factor for name, grad in grads.items()}, state

    return Transform(lambda params: OptState(), update)


def trace(momentum: float) -> Transform:
    """Heavy-ball momentum, torch.optim.SGD's form: buffer ← momentum·buffer + g; updates = buffer."""

    def init(params):
        return OptState(tensors=_zeros(params, "trace"))

    def update(grads, state, params=None):
        buffers = {name: _slot(state, "trace", name).mul_(momentum).add_(grad.float()) for name, grad in grads.items()}
        return {name: b.clone() for name, b in buffers.items()}, OptState(
            tensors={f"trace/{name}": b for name, b in buffers.items()}
        )

    return Transform(init, update)


def clip_by_global_norm(max_norm: float) -> Transform:
    """Scale all grads by min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ over every tensor (torch's clip_grad_norm_)."""

    def update(grads, state, params=None):
        total = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(grad.float()) for grad in grads.values()])
        )
        factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        return {name: grad.float() * factor for name, grad in grads.items()}, state

    return Transform(lambda params: OptState(), update)


def _bias_corrections(beta1: float, beta2: float, count: int, bias_correction: bool) -> tuple[float, float]:
    if not bias_correction:
        return 1.0, 1.0
    return 1 - beta1**count, math.sqrt(1 - beta2**count)


def scale_by_adam(beta1: float, beta2: float, tau: float, amsgrad: bool = False, bias_correction: bool = True) -> Transform:
    """(m/bc1) / (√v_max/bc2 + τ), torch.optim.Adam's arithmetic; `amsgrad` keeps the running max of v."""

    def init(params):
        tensors = _zeros(params, "m") | _zeros(params, "v")
        if amsgrad:
            tensors |= _zeros(params, "vmax")
        return OptState(tensors=tensors, info={"count": 0})

    def update(grads, state, params=None):
        count = int(state.info["count"]) + 1
        bc1, bc2_sqrt = _bias_corrections(beta1, beta2, count, bias_correction)
        tensors, updates = {}, {}
        for name, grad in grads.items():
            grad = grad.float()
            m = _slot(state, "m", name).lerp_(grad, 1 - beta1)
            v = _slot(state, "v", name).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            tensors[f"m/{name}"], tensors[f"v/{name}"] = m, v
            if amsgrad:
                v = torch.maximum(_slot(state, "vmax", name), v)
                tensors[f"vmax/{name}"] = v
            updates[name] = (m / (v.sqrt() / bc2_sqrt).add_(tau)).div_(bc1)
        return updates, OptState(tensors=tensors, info={"count": count})

    return Transform(init, update)


def scale_by_yogi(beta1: float, beta2: float, tau: float, bias_correction: bool = True) -> Transform:
    """Adam with Yogi's additive second moment: v ← v − (1−β2)·g²·sign(v − g²), v starting at 0."""

    def init(params):
        return OptState(tensors=_zeros(params, "m") | _zeros(params, "v"), info={"count": 0})

    def update(grads, state, params=None):
        count = int(state.info["count"]) + 1
        bc1, bc2_sqrt = _bias_corrections(beta1, beta2, count, bias_correction)
        tensors, updates = {}, {}
        for name, grad in grads.items():
            grad = grad.float()
            square = grad * grad
            m = _slot(state, "m", name).lerp_(grad, 1 - beta1)
            v = _slot(state, "v", name)
            v.sub_(torch.sign(v - square) * square, alpha=1 - beta2)
            tensors[f"m/{name}"], tensors[f"v/{name}"] = m, v
            updates[name] = (m / (v.sqrt() / bc2_sqrt).add_(tau)).div_(bc1)
        return updates, OptState(tensors=tensors, info={"count": count})

    return Transform(init, update)


def chain(*transforms: Transform) -> Transform:
    """Run transforms in order; component i's state keys are prefixed "i." so they never collide."""

    def init(params):
        return _join([transform.init(params) for transform in transforms])

    def update(grads, state, params=None):
        new_states = []
        for index, transform in enumerate(transforms):
            grads, sub_state = transform.update(grads, _part(state, index), params)
            new_states.append(sub_state)
        return dict(grads), _join(new_states)

    return Transform(init, update)


def _join(states: Sequence[OptState]) -> OptState:
    tensors, info = {}, {}
    for index, state in enumerate(states):
        tensors |= {f"{index}.{key}": value for key, value in state.tensors.items()}
        info |= {f"{index}.{key}": value for key, value in state.info.items()}
    return OptState(tensors=tensors, info=info)


def _part(state: OptState, index: int) -> OptState:
    prefix = f"{index}."
    return OptState(
        tensors={key[len(prefix):]: value for key, value in state.tensors.items() if key.startswith(prefix)},
        info={key[len(prefix):]: value for key, value in state.info.items() if key.startswith(prefix)},
    )


def sgd(lr: float, momentum: float = 0.0) -> Transform:
    if momentum == 0.0:
        return scale(-lr)
    return chain(trace(momentum), scale(-lr))


def adam(lr: float, beta1: float = 0.9, beta2: float = 0.999, tau: float = 1e-8, amsgrad: bool = False,
         bias_correction: bool = True) -> Transform:
    return chain(scale_by_adam(beta1, beta2, tau, amsgrad, bias_correction), scale(-lr))


def yogi(lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, bias_correction: bool = True) -> Transform:
    return chain(scale_by_yogi(beta1, beta2, tau, bias_correction), scale(-lr))


def apply_updates(params: Params, updates: Params) -> dict[str, torch.Tensor]:
    """params + updates, added in float32 and stored back in each tensor's dtype."""
    return {name: (tensor.float() + updates[name]).to(tensor.dtype) for name, tensor in params.items()}


class ServerOptimizerSettings(BaseModel):
    """The server optimiser, parsed from config (e.g. `gamlpp: {server_optimizer: {name: adam, lr: 1e-3}}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["sgd", "adam", "amsgrad", "yogi"] = "adam"
    lr: float = Field(1e-2, gt=0, description="server learning rate η_s (sgd with lr 1.0 is plain averaging)")
    momentum: float = Field(0.0, ge=0, lt=1, description="heavy-ball momentum (sgd only)")
    beta1: float = Field(0.9, ge=0, lt=1, description="first-moment decay (adam, amsgrad, yogi)")
    beta2: float = Field(0.99, ge=0, lt=1, description="second-moment decay (adam, amsgrad, yogi)")
    tau: float = Field(1e-3, gt=0, description="τ, the adaptivity floor added to √v (Adam's eps)")
    bias_correction: bool = Field(True, description="Adam-style bias correction of both moments")
    clip_norm: float | None = Field(None, gt=0, description="clip the pseudo-gradient's global L2 norm first")


def build_server_optimizer(settings: ServerOptimizerSettings) -> Transform:
    s = settings
    if s.name == "sgd":
        optimiser = sgd(s.lr, s.momentum)
    elif s.name == "yogi":
        optimiser = yogi(s.lr, s.beta1, s.beta2, s.tau, s.bias_correction)
    else:
        optimiser = adam(s.lr, s.beta1, s.beta2, s.tau, amsgrad=s.name == "amsgrad", bias_correction=s.bias_correction)
    if s.clip_norm is None:
        return optimiser
    return chain(clip_by_global_norm(s.clip_norm), optimiser)


def to_server_state(state: OptState) -> tuple[dict[str, torch.Tensor], dict[str, JsonValue]]:
    """(buffers, info entry) for a ServerState: buffers named "serveropt/<key>", info under "serveropt"."""
    return {BUFFER_PREFIX + key: value for key, value in state.tensors.items()}, dict(state.info)


def from_server_state(buffers: Mapping[str, torch.Tensor], info: Mapping[str, JsonValue]) -> OptState:
    """The optimiser state back from a ServerState's buffers and its info["serveropt"] entry."""
    return OptState(
        tensors={key[len(BUFFER_PREFIX):]: value for key, value in buffers.items() if key.startswith(BUFFER_PREFIX)},
        info=dict(info),
    )


def server_step(
    transform: Transform,
    weights: Params,
    pseudo_grad: Params,
    buffers: Mapping[str, torch.Tensor],
    info: Mapping[str, JsonValue] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, JsonValue]]:
    """One server step: (new weights, new buffers, new info entry) from a ServerState's pieces.

    Buffers not owned by the optimiser are kept; `info` is the old info["serveropt"] entry, or
    None before the first step (then the optimiser is initialised from `weights`).
    """
    state = transform.init(weights) if info is None else from_server_state(buffers, info)
    updates, state = transform.update(pseudo_grad, state, weights)
    own, own_info = to_server_state(state)
    kept = {key: value for key, value in buffers.items() if not key.startswith(BUFFER_PREFIX)}
    return apply_updates(weights, updates), kept | own, own_info
