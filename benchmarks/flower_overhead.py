"""Per-round cost of the Flower runtimes against the local runtime, on the same config and seed.

Runs the config once per runtime (local, flower-sim, flower on a loopback SuperLink with one
warm SuperNode per client, and with --runtimes also flower-cold: the same with `--cold` nodes),
then reports per runtime: the median round time after the first round, the overhead against
local, the first round on its own (it pays the start-up: Ray's, or a warm node's worker start and
model load), and for the Flower runtimes a breakdown of the round (the slowest client's ClientApp
process start and imports, worker start, model load, data, hand-off to the worker and training,
as the client measured them; the rest of the exchange = transport, polling and queueing; the
server's aggregation, evaluation and checkpoint), after the first round and for the first round:
a simulation's Ray workers and a warm node's worker pay the imports and load once, a cold node's
fresh ClientApp process every message. Plus the ledger's codec bytes, Flower's encoding of the
same messages and, in deployment, the SuperLink's TCP bytes, as ratios for the uplink. All runs
must end with bit-identical weights (checked).

    .venv/bin/python benchmarks/flower_overhead.py [--config configs/quickstart.yaml] [--rounds 4]
        [--runtimes local,flower-sim,flower,flower-cold] [--task-poll-s 0.1] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import results_header
from safetensors.torch import load_file


RUNTIMES = ("local", "flower-sim", "flower", "flower-cold")


# flwr/supernode/start_client_internal.py: a SuperNode that pulled no message sleeps 3 s before it asks again,
# so a node waiting for the next round's message sees it up to 3 s late; Flower 1.41 has no option for it.
SUPERNODE_IDLE_SLEEP_S = 3.0


def run_all(config_path: str, rounds: int, overrides: list[str], root: Path,
            runtimes: tuple[str, ...] = ("local", "flower-sim", "flower")) -> dict:
    from zofed.config import load_config
    from zofed.runtime.flower.deployment import flower_env, run_flower, threads_per_node
    from zofed.runtime.flower.loopback import LoopbackFederation
    from zofed.runtime.flower.simulation import run_flower_sim
    from zofed.runtime.driver import round_rows, run_experiment

    results, weights, node_threads = {}, {}, None
    header = results_header.begin()  # commit, machine, load average before
    for runtime in runtimes:
        engine = "flower" if runtime == "flower-cold" else runtime
        config = load_config(config_path, [*overrides, f"rounds={rounds}", f"output_dir={root / runtime}", f"runtime={engine}"])
        if runtime == "local":
            summary = run_experiment(config, show_progress=False)
        elif runtime == "flower-sim":
            summary = run_flower_sim(config, show_progress=False)
        else:
            federation = LoopbackFederation(root / f"federation-{runtime}")
            try:
                federation.start_superlink()
                # the nodes share this machine's cores, as `zofed flower up` splits them
                node_threads = threads_per_node(config.clients)
                threads = str(node_threads)
                for client in range(config.clients):
                    federation.start_supernode(client, "--state-dir", str(root / f"federation-{runtime}" / f"node-{client}"),
                                               "--threads", threads, *(["--cold"] if runtime == "flower-cold" else []))
                config = config.model_copy(update={"superlink": federation.superlink})
                summary = run_flower(config, show_progress=False)
            finally:
                federation.stop_all()
        rows = round_rows(config.run_dir)
        weights[runtime] = load_file(str(config.run_dir / "final.safetensors"))
        results[runtime] = describe(rows, summary, parallel_clients=engine == "flower" or config.flower.sim_workers > 1)
    local_round = results["local"]["round_s_median_after_first"]
    for runtime, result in results.items():
        result["overhead_vs_local"] = result["round_s_median_after_first"] / local_round - 1.0
    identical = all(
        all(weights["local"][name].equal(weights[runtime][name]) for name in weights["local"]) for runtime in weights
    )
    # Timings on a shared machine are only as good as its idleness: the load is recorded with them.
    configs = {runtime: results_header.resolve(config_path, [*overrides, f"rounds={rounds}",
                                                              f"runtime={'flower' if runtime == 'flower-cold' else runtime}"])
               for runtime in results}
    return results_header.end(header, configs, {
        "config": config_path, "overrides": overrides, "rounds": rounds,
        # How often a SuperExec looks for a message to launch (zofed's default, see deployment.TASK_POLL_S),
        # and how long an idle SuperNode sleeps before it asks the SuperLink again (Flower's, not settable).
        "superexec_task_poll_interval_s": float(flower_env()["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]),
        "supernode_threads": node_threads,  # torch threads each SuperNode trains with (cores / nodes)
        "supernode_idle_pull_sleep_s": SUPERNODE_IDLE_SLEEP_S,
        "bit_identical_final_weights": identical, "runtimes": results})


def describe(rows: list[dict], summary: dict, parallel_clients: bool) -> dict:
    later = rows[1:] or rows
    clients = [client for row in later for client in row["per_client"]]
    result = {
        "round_s": [row["seconds"] for row in rows],
        "round_s_median_after_first": statistics.median(row["seconds"] for row in later),
        "first_round_s": rows[0]["seconds"],  # start-up included: reported apart from the rounds after it
        "client_train_s_mean": statistics.mean(client["seconds"] for client in clients),
        "bytes_up": summary["bytes_up"],
        "bytes_down": summary["bytes_down"],
    }
    if "setup_s" in clients[0]:
        result["client_setup_s_mean"] = statistics.mean(client["setup_s"] for client in clients)
        result["model_load_s_per_round"] = [max(c["model_load_s"] for c in row["per_client"]) for row in rows]
        # CPU seconds: what the load costs on a core of its own, whatever else the machine runs.
        result["model_load_cpu_s_per_round"] = [max(c["model_load_cpu_s"] for c in row["per_client"]) for row in rows]
        result["imports_cpu_s_mean"] = statistics.mean(c.get("imports_cpu_s", 0.0) for row in later for c in row["per_client"])
        result["breakdown_after_first"] = breakdown(later, parallel_clients)
        result["breakdown_first_round"] = breakdown(rows[:1], parallel_clients)
    for key in ("flower_bytes_up", "flower_bytes_down", "superlink_tcp_bytes"):
        if key in summary:
            result[key] = summary[key]
    if "flower_bytes_up" in summary:
        # Seeds-and-scalars payloads are small: Flower's framing of them is the overhead that matters.
        result["uplink_flower_over_ledger"] = summary["flower_bytes_up"] / summary["bytes_up"]
        replies = sum(len(row["per_client"]) for row in rows)
        result["uplink_payload_bytes_per_reply"] = summary["bytes_up"] / replies
        result["uplink_flower_framing_bytes_per_reply"] = (summary["flower_bytes_up"] - summary["bytes_up"]) / replies
        if "superlink_tcp_bytes" in summary:  # everything the SuperNodes sent: replies, polls, heartbeats
            result["uplink_tcp_over_ledger"] = summary["superlink_tcp_bytes"]["nodes_received"] / summary["bytes_up"]
    return result


def breakdown(rows: list[dict], parallel_clients: bool) -> dict:
    """Where a Flower round's seconds went, medians over rounds: the clients' ClientApp process start
    and imports, warm worker start, model load, data, hand-off to the worker and training (the slowest client's when they run side by side, one
    SuperNode each; their sum when one worker runs them in turn); the rest of the exchange
    (transport, polling, queueing) and the server's own work (aggregation, evaluation, checkpoint)."""
    keys = {"process_start_s": "process_start_s", "imports_s": "imports_s", "worker_start_s": "worker_start_s",
            "model_load_s": "model_load_s", "handoff_s": "handoff_s", "compute_s": "seconds"}
    parts = []
    for row in rows:
        per_client = [{part: c.get(key, 0.0) for part, key in keys.items()} | {"data_s": c["setup_s"] - c["model_load_s"]}
                      for c in row["per_client"]]
        if parallel_clients:
            client = max(per_client, key=lambda c: sum(c.values()))
        else:
            client = {part: sum(c[part] for c in per_client) for part in per_client[0]}
        parts.append({
            **client,
            "transport_polling_s": row["flower_exchange_s"] - sum(client.values()),
            "server_s": row["seconds"] - row["flower_exchange_s"],
            "round_s": row["seconds"],
        })
    return {key: statistics.median(part[key] for part in parts) for key in parts[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default=None, help="write the results here (default: print only)")
    parser.add_argument("--runtimes", default="local,flower-sim,flower", help=f"comma-separated, of {', '.join(RUNTIMES)}; local first")
    parser.add_argument("--task-poll-s", type=float, default=None,
                        help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL for the Flower processes (default: Flower's, 1 s)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="zofed-flower-bench-") as scratch:
        os.environ["FLWR_HOME"] = str(Path(scratch) / "flwr-home")
        if args.task_poll_s is not None:
            os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.task_poll_s)
        runtimes = tuple(name.strip() for name in args.runtimes.split(","))
        if runtimes[0] != "local" or not set(runtimes) <= set(RUNTIMES):
            parser.error(f"--runtimes: local first, then any of {', '.join(RUNTIMES[1:])}")
        result = run_all(args.config, args.rounds, args.overrides, Path(scratch), runtimes)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0 if result["bit_identical_final_weights"] else 1


if __name__ == "__main__":
    sys.exit(main())
