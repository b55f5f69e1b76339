"""`zofed eval`: a finished run's weights on any data file, as JSON."""

from __future__ import annotations

from pathlib import Path

from zofed.config import parse_config
from zofed.data import get_task, load_examples, tokenize_example
from zofed.eval import evaluate_loss, exact_match_accuracy
from zofed.runtime.driver import DEFAULT_MAX_NEW_TOKENS
from zofed.runtime.saved_run import load_run_model, open_run


def evaluate_run(run_dir: Path, task_name: str | None, data_path: str | None, weights: str, limit: int,
                 device: str | None = None) -> dict:
    """`task_name`: the data's task format (default: the run's own task); `device`: where to evaluate
    (default: the run's own `device`)."""
    config, weights_file = open_run(run_dir, weights)
    task_name = task_name or config.task
    if device:
        config = parse_config(config.to_dict(), [f"device={device}"])
    task = get_task(task_name)
    examples = load_examples(task_name, data_path, limit, seed=0)
    loaded, _ = load_run_model(config, weights_file)

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
