"""The metrics the field reports, before -> after FedMeZO on SmolLM2-135M LoRA: GSM8K answer accuracy on the
official test split, and Alpaca Rouge-L on held-out instructions.

Two ordinary runs (`configs/gsm8k.yaml`, `configs/alpaca.yaml`) cut to one CPU slot (~20 min on 2 cores):
- GSM8K: train on `data.path` (the 7,473 training problems, limited), test on the official test split
  (`--gsm8k-test`: grade_school_math/data/test.jsonl of github.com/openai/grade-school-math, 1,319 problems,
  kept out of ../shared/data on purpose); `gsm8k_answer` scores its first `--examples` problems.
- Alpaca: validation and test held out of alpaca_5000.json; `rouge_l` scores the first `--examples` test
  instructions.

Writes one JSON (commit, machine, load average before/after, each run's resolved config and summary;
paths relative to the repository) after each run, so a stopped benchmark keeps what it finished.

    .venv/bin/python benchmarks/eval_metrics.py --gsm8k-test PATH/test.jsonl [--rounds 8] [override ...]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time

import results_header
from repo_paths import from_repo_root
from zofed.config import load_config
from zofed.runtime.driver import run_experiment

# Both runs: the configs' recipe (FedMeZO, LoRA r=16, batch 1, 8 clients, 2 per round) with fewer and
# shorter rounds, and evaluation sized so generation takes a minute or two per evaluation on 2 cores.
COMMON = ["local.local_steps=10", "eval.every=4", "eval.val_examples=32", "eval.test_examples=64", "eval.batch_size=8"]
TASKS = {
    "gsm8k": ("configs/gsm8k.yaml", ["data.limit=2000", "data.test_size=64", "eval.max_new_tokens=160",
                                     "eval.metrics=[loss,gsm8k_answer]"]),
    "alpaca": ("configs/alpaca.yaml", ["eval.max_new_tokens=128", "eval.metrics=[loss,rouge_l]"]),
}
METRIC = {"gsm8k": "gsm8k_answer", "alpaca": "rouge_l"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gsm8k-test", required=True, help="GSM8K's official test.jsonl (openai/grade-school-math)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--examples", type=int, default=64, help="test examples scored by each generation metric")
    parser.add_argument("--tasks", default="gsm8k,alpaca", help="comma-separated: gsm8k, alpaca")
    parser.add_argument("--out", default="benchmarks/results/eval_metrics.json")
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs, e.g. fedmezo.lr=1e-4")
    args = parser.parse_args()
    gsm8k_test, out = from_repo_root(args.gsm8k_test, args.out)
    if not gsm8k_test.is_file():
        sys.exit(f"eval_metrics: --gsm8k-test {args.gsm8k_test} is not a file; pass GSM8K's official test.jsonl")
    document = {**results_header.begin(), "resolved_configs": {},
                "gsm8k_test": {"rows": sum(1 for line in gsm8k_test.open() if line.strip()),
                               "sha256": hashlib.sha256(gsm8k_test.read_bytes()).hexdigest()},
                "rounds": args.rounds, "examples": args.examples, "overrides": args.overrides, "runs": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for task in args.tasks.split(","):
            config_path, task_overrides = TASKS[task]
            extra = [f"data.test_path={gsm8k_test.resolve()}"] if task == "gsm8k" else []
            config = load_config(config_path, [*COMMON, *task_overrides, *extra, *args.overrides, f"rounds={args.rounds}",
                                               f"eval.accuracy_examples={args.examples}", f"name=eval-metrics-{task}",
                                               f"output_dir={scratch}"])
            started = time.perf_counter()
            summary = run_experiment(config, show_progress=False)
            metric = METRIC[task]
            print(f"{task}: test {metric} {summary[f'initial_test_{metric}']:.4f} -> {summary[f'final_test_{metric}']:.4f}, "
                  f"test loss {summary['initial_test_loss']:.4f} -> {summary['final_test_loss']:.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
            document["resolved_configs"][task] = config.to_dict()
            document["runs"][task] = {"config": config_path, "summary": summary}
            document["load_average_after"] = list(os.getloadavg())
            results_header.write(out, document, scratch)


if __name__ == "__main__":
    main()
