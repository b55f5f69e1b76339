"""A finished run read back from its directory: the resolved config and the model with its weights.

Both files are untrusted input: a damaged, truncated or foreign `config.yaml` or weights file ends
in one line naming it, before (or instead of) anything heavy loading.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from zofed.config import RunConfig, excerpt, parse_config, read_config_file
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
    damaged = f"the run's config '{config_file}' is damaged"
    try:
        raw = read_config_file(config_file)
    except ZofedError as error:
        raise ZofedError(f"{damaged} ({error}); restore it or run again") from None
    if not isinstance(raw, dict):
        raise ZofedError(f"{damaged} (it holds no mapping of settings); restore it or run again")
    try:
        return parse_config(raw), weights_file
    except ZofedError as error:
        raise ZofedError(f"{damaged} ({error}); restore it or run again") from None


def load_run_model(config: RunConfig, weights_file: Path) -> tuple[LoadedModel, TrainableView]:
    """The run's model (with its adapters, if any) holding the trained weights."""
    weights = read_weights(weights_file)
    loaded, view = build_model(config)
    try:
        view.load_(weights)
    except ZofedError as error:
        raise ZofedError(f"'{weights_file}' does not fit the run's model ({excerpt(str(error), 200)})") from None
    return loaded, view


def read_weights(path: Path) -> dict:
    """A safetensors file of weights, or one line naming it when it is truncated or not safetensors."""
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types (and OSError)
        raise ZofedError(f"weights file '{path}' is damaged or truncated ({type(error).__name__}); "
                         "restore it, or use the other weights (--weights best/final)") from None
