"""The quickstart's before → after numbers (README, docs/results.md) as committed JSON.

    .venv/bin/python benchmarks/quickstart.py                       # run configs/quickstart.yaml (~5 min on 2 cores)
    .venv/bin/python benchmarks/quickstart.py --run-dir runs/quickstart --commit SHA --load-before A B C --load-after A B C
                                                                    # record a finished `zofed run` instead

Writes benchmarks/results/quickstart.json: the header (benchmarks/results_header.py), the run's summary, and the
`earlier` numbers the documents quote that no run of this script measures (`make demo` on a fresh clone), kept
from the previous JSON. The losses are deterministic, so load does not change them; the wall time it does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

import results_header
from repo_paths import ROOT, from_repo_root

CONFIG = "configs/quickstart.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/quickstart.json")
    parser.add_argument("--run-dir", help="a finished `zofed run configs/quickstart.yaml` to record instead of running")
    parser.add_argument("--commit", help="with --run-dir: the commit it ran at")
    parser.add_argument("--load-before", type=float, nargs=3, help="with --run-dir: the load average before it")
    parser.add_argument("--load-after", type=float, nargs=3, help="with --run-dir: the load average after it")
    args = parser.parse_args()
    out, *run_dir = from_repo_root(args.out, *([args.run_dir] if args.run_dir else []))
    earlier = json.loads(out.read_text()).get("earlier", {}) if out.is_file() else {}
    if run_dir:
        if not (args.commit and args.load_before and args.load_after):
            sys.exit("quickstart: --run-dir needs --commit, --load-before and --load-after (what the run does not store)")
        header = {**results_header.begin(), "commit": args.commit, "load_average_before": args.load_before}
        config = yaml.safe_load((run_dir[0] / "config.yaml").read_text())
        summary = json.loads((run_dir[0] / "summary.json").read_text())
        document = results_header.end(header, {"quickstart": config}, {})
        document["load_average_after"] = args.load_after
    else:
        from zofed.config import load_config
        from zofed.runtime.driver import run_experiment

        header = results_header.begin()
        with tempfile.TemporaryDirectory() as scratch:
            run_config = load_config(CONFIG, [f"output_dir={scratch}"])
            summary = run_experiment(run_config, show_progress=False)
        config = run_config.to_dict()
        config["output_dir"] = "runs"  # the scratch directory is gone; `zofed run` writes under runs/
        document = results_header.end(header, {"quickstart": config}, {})
    document.update({"benchmark": "benchmarks/quickstart.py", "config": CONFIG,
                     "accuracy_examples": config["eval"]["accuracy_examples"], "summary": summary, "earlier": earlier})
    results_header.write(out, document)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
