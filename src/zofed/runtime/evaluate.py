"""`zofed eval`: a finished run's weights on any data file, as JSON."""

from __future__ import annotations

from pathlib import Path

import yaml
from safetensors.torch import load_file

from zofed.config import parse_config
from zofed.data import get_task, load_examples, tokenize_example
from zofed.errors import ZofedError
from zofed.eval import evaluate_loss, exact_match_accuracy
from zofed.runtime.experiment import build_model
from zofed.runtime.local import DEFAULT_MAX_NEW_TOKENS


def evaluate_run(run_dir: Path, task_name: str, data_path: str | None, weights: str, limit: int,
                 device: str | None = None) -> dict:
    """`device`: where to evaluate (default: the run's own `device`)."""
    config_file, weights_file = run_dir / "config.yaml", run_dir / f"{weights}.safetensors"
    if not config_file.is_file():
        raise ZofedError(f"'{run_dir}' is not a run directory (no config.yaml); pass e.g. runs/quickstart")
    if not weights_file.is_file():
        raise ZofedError(f"run '{run_dir}' has no {weights} weights ({weights_file.name}); finish the run with --resume first")
    task = get_task(task_name)
    examples = load_examples(task_name, data_path, limit, seed=0)
    config = parse_config(yaml.safe_load(config_file.read_text()), [f"device={device}"] if device else [])

    loaded, view = build_model(config)
    view.load_(load_file(str(weights_file)))

    max_length = config.data.max_length or task.default_max_length
    tokenizer = loaded.tokenizer
    tokens = [tokenize_example(tokenizer, ex, max_length, config.data.system_prompt) for ex in examples]
    result = {
        "run": str(run_dir),
        "weights": weights,
        "task": task_name,
        "data": data_path,
        "examples": len(examples),
        "loss": evaluate_loss(loaded.model, tokens, int(tokenizer.pad_token_id), config.eval.batch_size),
        "accuracy": None,
    }
    if task.short_answers:
        result["accuracy"] = exact_match_accuracy(
            loaded.model, tokenizer, examples, task.extract_answer, max_length,
            config.eval.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, config.eval.batch_size, config.data.system_prompt,
        )
    return result
