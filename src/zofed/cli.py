"""The `zofed` command. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from zofed.errors import ZofedError

EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    # Nothing downloads at run time unless the user asks for it explicitly (HF_HUB_OFFLINE=0).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ZofedError as error:
        print(f"zofed: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("zofed: interrupted; continue with --resume", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zofed", description="Zeroth-order federated fine-tuning of LLMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a federated fine-tuning config")
    run.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    run.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. rounds=2 fedmezo.lr=1e-3")
    run.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="delete an existing run directory and start over")
    run.add_argument("--no-progress", action="store_true", help="no live progress bar")
    run.set_defaults(handler=_run)

    listing = commands.add_parser("list", help="list algorithms, models, tasks and partitioners")
    listing.set_defaults(handler=_list)

    data = commands.add_parser("data", help="show how a config splits its data across clients")
    data.add_argument("config")
    data.add_argument("overrides", nargs="*")
    data.set_defaults(handler=_data)

    evaluate = commands.add_parser("eval", help="evaluate a run's weights on a data file")
    evaluate.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")
    evaluate.add_argument("--task", required=True, help="task format of the data (see `zofed list`)")
    evaluate.add_argument("--data", default=None, help="data file/dir or hub name (omit for the built-in task)")
    evaluate.add_argument("--weights", choices=("final", "best"), default="final")
    evaluate.add_argument("--examples", type=int, default=128, help="evaluate at most this many examples")
    evaluate.set_defaults(handler=_eval)
    return parser


def _run(args: argparse.Namespace) -> int:
    from zofed.config import load_config
    from zofed.runtime.local import run_local

    config = load_config(args.config, args.overrides)
    summary = run_local(
        config, resume=args.resume, overwrite=args.overwrite, show_progress=not args.no_progress
    )
    print(json.dumps(summary, indent=2))
    print(f"results in {config.run_dir}/ (summary.json, metrics.jsonl, report.png)", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from zofed.algorithms import ALGORITHMS
    from zofed.data import PARTITIONERS, TASKS
    from zofed.llm import BUILTIN_MODELS

    print("algorithms:")
    for name, entry in sorted(ALGORITHMS.items()):
        print(f"  {name:14s} {entry.description}")
    print("models (or any local directory / hub id available offline):")
    for name, model in BUILTIN_MODELS.items():
        print(f"  {name:14s} {getattr(model, 'description', model)}")
    print("tasks:")
    for name, task in TASKS.items():
        print(f"  {name:14s} {task.description}")
    print("partitioners:")
    for name in PARTITIONERS:
        print(f"  {name}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from zofed.config import load_config
    from zofed.data import partition_table
    from zofed.runtime.experiment import prepare_data

    config = load_config(args.config, args.overrides)
    data = prepare_data(config)
    splits = data.splits
    print(f"task {config.task}: train {len(splits.train)}, validation {len(splits.val)}, test {len(splits.test)}")
    print(f"partition {config.partition.method} across {config.clients} clients:")
    for row in partition_table(data.client_labels(), data.client_indices):
        labels = ", ".join(f"{label}={count}" for label, count in sorted(row["labels"].items(), key=str))
        print(f"  client {row['client']:3d}  size {row['size']:6d}  {labels}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from zofed.runtime.evaluate import evaluate_run

    result = evaluate_run(Path(args.run_dir), args.task, args.data, args.weights, args.examples)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
