"""A finished run read back from its directory: the resolved config and the model with its weights."""

from __future__ import annotations

from pathlib import Path

import yaml
from safetensors.torch import load_file

from zofed.config import RunConfig, parse_config
from zofed.errors import ZofedError
from zofed.llm import LoadedModel, TrainableView
from zofed.runtime.experiment import build_model


def open_run(run_dir: Path, weights: str) -> tuple[RunConfig, Path]:
    """The run's config and the path of its `weights` file, checked before anything heavy loads."""
    config_file, weights_file = run_dir / "config.yaml", run_dir / f"{weights}.safetensors"
    if not config_file.is_file():
        raise ZofedError(f"'{run_dir}' is not a run directory (no config.yaml); pass e.g. runs/quickstart")
    if not weights_file.is_file():
        raise ZofedError(f"run '{run_dir}' has no {weights} weights ({weights_file.name}); finish the run with --resume first")
    return parse_config(yaml.safe_load(config_file.read_text())), weights_file


def load_run_model(config: RunConfig, weights_file: Path) -> tuple[LoadedModel, TrainableView]:
    """The run's model (with its adapters, if any) holding the trained weights."""
    loaded, view = build_model(config)
    view.load_(load_file(str(weights_file)))
    return loaded, view
