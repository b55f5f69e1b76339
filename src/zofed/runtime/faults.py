"""Injected faults for the in-process runtime: lost replies and hostile clients, to test defences.

All decisions derive from (run seed, round, client), so a faulty run is as reproducible (and as
resumable) as a clean one.
  drop_rate        each sampled client's reply is lost with this probability (the client did the
                   work and keeps what it synced to; the server never hears back)
  hostile_clients  clients whose every reply is corrupted by `hostile_mode`:
                     scale      scalars, or the weight update, multiplied by `hostile_scale`
                     sign-flip  negated (the update reversed)
                     random     replaced by Gaussian noise of the same norm
                     nan        NaN everywhere (caught by reply screening)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from zofed.config import FaultsConfig
from zofed.messages import Message
from zofed.zo.seeds import mix_seed

FAULT_STREAM = 0xFA17


def reply_lost(config: FaultsConfig, run_seed: int, round: int, client: int) -> bool:
    if config.drop_rate == 0.0:
        return False
    return np.random.default_rng(mix_seed(run_seed, FAULT_STREAM, round, client)).random() < config.drop_rate


def corrupt(reply: Message, config: FaultsConfig, weights: dict[str, torch.Tensor], seed: int) -> Message:
    """The reply a hostile client sends instead of `reply`; weights are attacked through their update."""
    generator = torch.Generator().manual_seed(seed % (1 << 63))

    def attack(values: torch.Tensor) -> torch.Tensor:
        if config.hostile_mode == "scale":
            return values * config.hostile_scale
        if config.hostile_mode == "sign-flip":
            return -values
        if config.hostile_mode == "nan":
            return torch.full_like(values, float("nan"))
        noise = torch.randn(values.shape, generator=generator, dtype=values.dtype)
        return noise * (values.norm() / noise.norm().clamp_min(1e-30))

    scalars = reply.scalars
    if scalars:
        scalars = tuple(float(v) for v in attack(torch.tensor(scalars, dtype=torch.float64)))
    tensors = dict(reply.tensors)
    if tensors:
        # the reply is host bytes decoded; the server's weights live on its device
        base = {name: weights[name].to(tensor.device).float() if reply.kind == "weights"
                else torch.zeros_like(tensor, dtype=torch.float32) for name, tensor in tensors.items()}
        tensors = {name: (base[name] + attack(t.float() - base[name])).to(t.dtype) for name, t in tensors.items()}
    return replace(reply, scalars=scalars, tensors=tensors)
