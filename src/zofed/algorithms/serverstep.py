"""A server optimiser step on a ServerState, shared by every method that offers `server_optimizer`.

The pseudo-gradient is old − new weights (serveropt's convention). The optimiser's tensors live
in the state's buffers under "serveropt/..." and its JSON state in info["serveropt"], so a
checkpoint holds all of it and resume is bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from zofed.algorithms.base import ServerState
from zofed.serveropt import Transform, server_step
from zofed.serveropt.transforms import INFO_KEY

if TYPE_CHECKING:  # annotations only: importing this module (the registry does) does not import torch
    import torch


def pseudo_gradient(old: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """old − new per tensor, in float32."""
    return {name: old[name].float() - new[name].float() for name in old}


def optimizer_step(state: ServerState, pseudo_grad: Mapping[str, torch.Tensor], transform: Transform,
                   info: Mapping | None = None) -> ServerState:
    """The next state: weights moved by the optimiser; `info` (default the old state's) gets its state."""
    weights, buffers, optimizer_info = server_step(
        transform, state.weights, pseudo_grad, state.buffers, state.info.get(INFO_KEY)
    )
    info = dict(state.info if info is None else info)
    return ServerState(weights=weights, buffers=buffers, info={**info, INFO_KEY: optimizer_info})
