"""The settings every zeroth-order method shares, and what a ZO client reads back from its downlink.

A ZO method's settings class derives from `ZOSettings` (or `DownlinkSettings`, which adds the
replay downlink), overrides the defaults its paper publishes by redeclaring a field with the
shared type (`lr: LearningRate = Field(1e-5, description=...)`), adds what is its own, and
declares `replays_directions`. `lr: auto` is filled before round 1 by the one learning-rate range
test every ZO method shares (`LR_PROBE`, runtime/lr_probe.py): a method is never built with "auto". The shared fields travel to clients through `client_config`, and
a client reads them back with `ZOClientConfig.of`, so a method never spells them out itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from zofed.algorithms.base import Preparation, ServerState, Settings, client_directions, server_device
from zofed.algorithms.weighting import WEIGHTING_HELP, Weighting
from zofed.messages import JsonValue
from zofed.zo import (DEFAULT_POOL_SIZE, ESTIMATOR_HELP, STEP_LOSS_HELP, DirectionSampler, Estimator, StepLoss,
                      make_directions)

if TYPE_CHECKING:  # annotations only: importing this module (the registry does) does not import torch
    import torch

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# a number, or "auto": found by the range test before round 1 (always a number once the run starts)
LearningRate = PositiveFloat | Literal["auto"]
DirectionsName = Literal["gaussian", "pool"]


# Every ZO method draws z with zofed's samplers: a line of each method's `differs` (AlgorithmEntry) with official code.
OWN_DIRECTIONS = ("zofed's gaussian (per tensor, from the seed) or pool sampler, not the official code's torch "
                  "generator: the same distribution, other numbers (runs are not bit-comparable)")

# run by the runtime in the run's own process (runtime/prepare.py IN_PROCESS names it): algorithms never import the runtime
LR_PROBE = Preparation(fills="lr", needed=lambda settings: settings.lr == "auto", in_process="lr_range_test")


@lru_cache(maxsize=8)
def _sampler(directions: str, pool_size: int) -> DirectionSampler:
    # Samplers hold no state between calls (a gaussian one re-seeds per tensor), so one per
    # (name, size) serves every settings object of the process.
    return make_directions(directions, pool_size)


class ZOSettings(Settings):
    """The fields every ZO method has; a method overrides only the defaults its paper publishes."""

    PREPARE = (LR_PROBE,)

    lr: LearningRate = Field(1e-3, description="η, the learning rate of a local ZO step, or auto (a range test before round 1)")
    mu: PositiveFloat = Field(1e-2, description="μ, the perturbation scale")
    directions: DirectionsName = Field("gaussian", description="direction sampler: gaussian (exact) or pool (fast, portable)")
    pool_size: int = Field(DEFAULT_POOL_SIZE, ge=1024, description="values in the pool sampler's table")
    estimator: Estimator = Field("central", description=ESTIMATOR_HELP)
    step_loss: StepLoss = Field("plus", description=STEP_LOSS_HELP)
    weighting: Weighting = Field("examples", description=WEIGHTING_HELP)

    @property
    def sampler(self) -> DirectionSampler:
        """The server's direction sampler, built once per process for these settings."""
        return _sampler(self.directions, self.pool_size)

    @property
    def scalars_per_step(self) -> int | None:
        return 1  # one direction per local step; methods with several redeclare it

    @property
    def replays_directions(self) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must declare replays_directions")

    def client_config(self, state: ServerState) -> dict[str, JsonValue]:
        """The shared fields of a downlink's config: what `ZOClientConfig.of` reads on the client.

        The sampler's stream goes with them when another party replays the client's directions:
        the server rebuilds z on its own device, so a client whose device would draw another z
        refuses the round (`client_directions`) rather than train on directions nobody can replay.
        """
        config: dict[str, JsonValue] = {"lr": self.lr, "mu": self.mu, "directions": self.directions,
                                        "pool_size": self.pool_size, "estimator": self.estimator,
                                        "step_loss": self.step_loss}
        if self.replays_directions:
            config["stream"] = self.sampler.stream_id(server_device(state))
        return config


@dataclass(frozen=True)
class ZOClientConfig:
    """The shared ZO fields as a client reads them from its downlink (the server's values, not its own settings)."""

    lr: float
    mu: float
    directions: DirectionSampler
    estimator: Estimator
    step_loss: StepLoss

    @classmethod
    def of(cls, config: Mapping[str, Any], device: torch.device) -> "ZOClientConfig":
        return cls(lr=float(config["lr"]), mu=float(config["mu"]), directions=client_directions(config, device),
                   estimator=str(config["estimator"]), step_loss=str(config["step_loss"]))
