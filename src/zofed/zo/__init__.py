"""Torch-only zeroth-order core: seeds, direction samplers, in-place perturbation, step, replay."""

from zofed.zo.directions import DIRECTION_SAMPLERS, DirectionSampler, GaussianDirections, make_directions
from zofed.zo.perturb import Scratch, perturb_
from zofed.zo.seeds import SEED_LIMIT, mix_seed
from zofed.zo.step import StepResult, replay_, zo_step

__all__ = [
    "DIRECTION_SAMPLERS",
    "DirectionSampler",
    "GaussianDirections",
    "SEED_LIMIT",
    "Scratch",
    "StepResult",
    "make_directions",
    "mix_seed",
    "perturb_",
    "replay_",
    "zo_step",
]
