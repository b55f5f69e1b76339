"""`zofed eval`: a finished run's weights on any data file, scored by the metrics asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zofed.config import parse_config
from zofed.data import get_task, load_examples, tokenize_example
from zofed.eval import (GENERATION_METRICS, default_max_new_tokens, evaluate_loss, generate_answers, resolve_metrics,
                        score_generations)
from zofed.runtime.saved_run import load_run_model, open_run
from zofed.status import phase


def evaluate_run(run_dir: Path, task_name: str | None, data_path: str | None, weights: str, limit: int,
                 device: str | None = None, metrics: Sequence[str] | None = None, live: bool = True) -> dict:
    """`task_name`: the data's task format (default: the run's own task); `device`: where to evaluate
    (default: the run's own `device`); `metrics`: default the run's `eval.metrics` on its own task, else
    the task's default set. Every metric is scored on all the (at most `limit`) examples."""
    config, weights_file = open_run(run_dir, weights)
    own_task = task_name is None or task_name == config.task
    task_name = task_name or config.task
    if device:
        config = parse_config(config.to_dict(), [f"device={device}"])
    task = get_task(task_name)
    metrics = resolve_metrics(task, metrics or (config.eval.metrics if own_task else None))
    examples = load_examples(task_name, data_path, limit, seed=0)
    loaded, _ = load_run_model(config, weights_file)

    max_length = config.data.max_length or task.default_max_length
    tokenizer = loaded.tokenizer
    scores: dict[str, float | None] = {}
    if "loss" in metrics:
        with phase(f"evaluating the loss ({len(examples)} examples)", live):
            tokens = [tokenize_example(tokenizer, ex, max_length, config.data.system_prompt) for ex in examples]
            scores["loss"] = evaluate_loss(loaded.model, tokens, int(tokenizer.pad_token_id), config.eval.batch_size)
    generated = [name for name in metrics if name in GENERATION_METRICS]
    if generated:
        with phase(f"generating answers for {', '.join(generated)} ({len(examples)} examples)", live) as progress:
            texts = generate_answers(loaded.model, tokenizer, examples, max_length,
                                     config.eval.max_new_tokens or default_max_new_tokens(metrics),
                                     config.eval.batch_size, config.data.system_prompt, progress)
        scores |= score_generations(generated, examples, texts, task.extract_answer)
    return {
        "run": str(run_dir),
        "weights": weights,
        "task": task_name,
        "data": data_path,
        "examples": len(examples),
        "metrics": {name: scores.get(name) for name in metrics},
    }


def metrics_table(result: dict) -> str:
    """`zofed eval`'s result as a small Markdown table, one row per metric."""
    lines = [f"{result['run']} ({result['weights']} weights), task {result['task']}, {result['examples']} examples"
             + (f" of {result['data']}" if result["data"] else ""), "", "| metric | value |", "|---|---|"]
    for name, value in result["metrics"].items():
        lines.append(f"| {name} | {'–' if value is None or value != value else f'{value:.4f}'} |")
    return "\n".join(lines) + "\n"
