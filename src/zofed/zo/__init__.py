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
from zofed.zo.step import (
    ESTIMATOR_HELP,
    STEP_LOSS_HELP,
    Estimator,
    StepLoss,
    StepResult,
    forward_passes,
    replay_,
    two_point,
    zo_step,
)

__all__ = [
    "DEFAULT_POOL_SIZE",
    "PoolDirections",
    "normal_table",
    "pool_table",
    "require_same_stream",
    "DIRECTION_SAMPLERS",
    "DirectionSampler",
    "ESTIMATOR_HELP",
    "Estimator",
    "GaussianDirections",
    "SEED_LIMIT",
    "STEP_LOSS_HELP",
    "StepLoss",
    "Scratch",
    "StepResult",
    "forward_passes",
    "make_directions",
    "mix_seed",
    "perturb_",
    "replay_",
    "two_point",
    "zo_step",
]
