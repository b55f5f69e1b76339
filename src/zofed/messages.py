"""What travels between server and client.

An algorithm builds these; a transport only encodes, moves and counts them. The payload kinds:
`weights` (trainable tensors), `delta` (tensor differences), `seeds` (per-step (seed, g) records
plus what the server needs to rebuild z), `replay` ((seed, coeff) records), `control` (config only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # annotations only: the registry imports this module without torch
    import torch

JsonScalar = Union[str, int, float, bool, None]
JsonValue = Union[JsonScalar, list["JsonValue"], dict[str, "JsonValue"]]

PAYLOAD_KINDS = ("weights", "delta", "seeds", "replay", "control")


@dataclass(frozen=True)
class Message:
    kind: str
    round: int
    config: Mapping[str, JsonValue] = field(default_factory=dict)
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()
    scalars: tuple[float, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PAYLOAD_KINDS:
            raise ValueError(f"unknown payload kind '{self.kind}'; expected one of {PAYLOAD_KINDS}")
