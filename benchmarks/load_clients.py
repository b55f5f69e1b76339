"""Memory and per-round work of the local runtime at 100 vs 1,000 clients, 10 sampled per round.

tiny-llama, FedMeZO with the seed protocol (`upload: seeds`, `downlink: replay`), so every client
sampled keeps a model copy between rounds. Each case runs in a fresh process; after every round
it samples the process's resident memory, and reports the growth from the end of round 1 to the
largest later value, next to the counts of client steps and kept-model files. A third case runs
1,000 clients with the kept copies held in memory (how the runtime used to keep them), to show
what the measurement sees when something per client stays resident.

    PYTHONPATH=src .venv/bin/python benchmarks/load_clients.py [--rounds 20]
    PYTHONPATH=src .venv/bin/python benchmarks/load_clients.py --child 1000 --rounds 20   # one case, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from zofed.runtime.prepare import CHILD_ENV as PROFILE_ENV

SAMPLED = 10
# glibc keeps freed memory resident unless its mmap threshold is fixed: without this, the
# transient copies of a round would show up as growth.
CHILD_ENV = {**os.environ, **PROFILE_ENV, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def load_config(clients: int, rounds: int, out: Path):
    from zofed.config import parse_config

    raw = {
        "name": f"load-{clients}", "seed": 3, "rounds": rounds, "model": "tiny-llama", "task": "builtin",
        "algorithm": "fedmezo", "clients": clients, "clients_per_round": SAMPLED, "output_dir": str(out),
        "data": {"limit": 1100, "val_size": 16, "test_size": 16},
        "partition": {"method": "iid"},
        "local": {"local_steps": 1, "batch_size": 1},
        "eval": {"every": rounds, "val_examples": 4, "test_examples": 4, "accuracy_examples": 0},
        # the transformer layers, not the embeddings: 0.6 MB a copy, so a copy per client would show
        "trainable": {"mode": "full", "layers": [0, 1, 2, 3]},
        "fedmezo": {"lr": 1e-3, "mu": 1e-3, "upload": "seeds", "downlink": "replay", "max_lag": 10},
    }
    return parse_config(raw, [])


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024.0 for line in status if line.startswith("VmRSS:"))


class MemoryKeptStore:
    """Kept models in a dict in the server process: the layout this benchmark guards against."""

    def __init__(self, directory) -> None:
        self.models = {}

    def client(self, client, at_most):
        from zofed.runtime.client import KeptInMemory

        return self.models.setdefault(client, KeptInMemory())


def child(clients: int, rounds: int, kept_in_memory: bool) -> dict:
    """One run in this process: memory after each round, and how much work the rounds did."""
    import torch

    import zofed.runtime.driver as driver
    import zofed.runtime.round as round_body

    torch.set_num_threads(1)
    counts = {"client_rounds": 0}
    play_round, client_round = driver.run_round, round_body.client_round

    def counted_client_round(*args):
        counts["client_rounds"] += 1
        return client_round(*args)

    round_body.client_round = counted_client_round
    if kept_in_memory:
        driver.KeptStore = MemoryKeptStore
    memory = []

    def measured_round(*args):
        result = play_round(*args)
        memory.append(resident_mb())
        return result

    with tempfile.TemporaryDirectory(prefix="zofed-load-") as tmp:
        config = load_config(clients, rounds, Path(tmp))
        driver.run_experiment(config, show_progress=False, round_fn=measured_round)
        checkpoint = config.run_dir / "checkpoints"
        newest = sorted(checkpoint.glob("ckpt-*"))[-1]
        kept_files = list((config.run_dir / "clients").glob("*/*.safetensors"))
        return {
            "clients": clients,
            "sampled_per_round": SAMPLED,
            "rounds": rounds,
            "kept_in_memory": kept_in_memory,
            "rss_after_round_1_mb": round(memory[0], 1),
            "rss_peak_mb": round(max(memory), 1),
            "rss_growth_mb": round(max(memory) - memory[0], 1),
            "client_rounds": counts["client_rounds"],
            "clients_with_kept_files": len({path.parent.name for path in kept_files}),
            "checkpoint_bytes": sum(path.stat().st_size for path in newest.iterdir()),
        }


def measure(clients: int, rounds: int, kept_in_memory: bool = False) -> dict:
    """`child` in a fresh process, so model loading and earlier cases do not blur its memory."""
    command = [sys.executable, __file__, "--child", str(clients), "--rounds", str(rounds)]
    if kept_in_memory:
        command.append("--kept-in-memory")
    done = subprocess.run(command, env=CHILD_ENV, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load case {clients} clients failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--child", type=int, help="run one case with this many clients and print its JSON")
    parser.add_argument("--kept-in-memory", action="store_true")
    parser.add_argument("--output", default="benchmarks/results/load_clients.json")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.rounds, args.kept_in_memory)))
        return

    import results_header

    header = results_header.begin()
    cases = [measure(100, args.rounds), measure(1000, args.rounds), measure(1000, args.rounds, kept_in_memory=True)]
    small, large, in_memory = cases
    configs = {f"{clients} clients": load_config(clients, args.rounds, Path("<scratch>")).to_dict() for clients in (100, 1000)}
    document = results_header.end(header, configs, {
        "cases": cases,
        "peak_rss_ratio_1000_to_100": round(large["rss_peak_mb"] / small["rss_peak_mb"], 3),
        "growth_difference_mb": round(large["rss_growth_mb"] - small["rss_growth_mb"], 1),
        "growth_with_copies_in_memory_mb": in_memory["rss_growth_mb"],
    })
    for case in cases:
        print(f"{case['clients']:5d} clients{' (copies in memory)' if case['kept_in_memory'] else '':20s} "
              f"peak RSS {case['rss_peak_mb']:7.1f} MB, growth after round 1 {case['rss_growth_mb']:6.1f} MB, "
              f"{case['client_rounds']} client rounds, checkpoint {case['checkpoint_bytes']:,} B")
    print(f"peak RSS 1000 / 100 clients: {document['peak_rss_ratio_1000_to_100']:.3f}")
    results_header.write(args.output, document)


if __name__ == "__main__":
    main()
