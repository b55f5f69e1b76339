"""Torch-only zeroth-order core: seeds, direction samplers, in-place perturbation, step, replay."""

from zofed.zo.directions import (
    DEFAULT_POOL_SIZE,
    DIRECTION_SAMPLERS,
    DirectionSampler,
    GaussianDirections,
    PoolDirections,
    make_directions,
    normal_table,
    pool_table,
    require_same_stream,
)
from zofed.zo.perturb import Scratch, perturb_
from zofed.zo.seeds import SEED_LIMIT, mix_seed
from zofed.zo.step import STEP_LOSS_HELP, StepLoss, StepResult, replay_, zo_estimate, zo_step

__all__ = [
    "DEFAULT_POOL_SIZE",
    "PoolDirections",
    "normal_table",
    "pool_table",
    "require_same_stream",
    "DIRECTION_SAMPLERS",
    "DirectionSampler",
    "GaussianDirections",
    "SEED_LIMIT",
    "STEP_LOSS_HELP",
    "StepLoss",
    "Scratch",
    "StepResult",
    "make_directions",
    "mix_seed",
    "perturb_",
    "replay_",
    "zo_estimate",
    "zo_step",
]
