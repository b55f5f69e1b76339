"""ZorBA against full-parameter FedMeZO, FedKSeed and backprop FedAvg: peak client memory, loss, bytes.

Memory: each case is one client's round, the server's side in a process of its own (it encodes
the round-1 downlink to a file) and the client's in another (`client_round_peak`, the same
function the start-up profile uses): the model is loaded, the downlink's bytes read, the peak-RSS
window reset, the client decodes the downlink, loads it and trains a few local steps; the peak is
that window's VmHWM. A ZorBA client with `downlink: replay` (the default) is measured twice, each
round in a fresh process: first contact (the weights, saved to its kept file on disk before
training) and its steady state (round 2's block records: the kept file loaded into the model, the
records replayed, the synced model saved again, then training). For the second, the server
process plays round 1 with every client in-process and encodes client's round-2 downlink. A ZorBA client first puts its inactive layers in bf16 (this also copies the
model out of the weight file's memory map), then opens the window; it gets the plan's blocks for
its device class (`zorba.device_profile`, clients 0/1/2 = smallest/middle/largest budget), and
its peak is checked against its budget. The window measures the round, not the model load: our
clients load the model in the configured dtype and then lower it, so a ZorBA process's lifetime
peak is that load (`resident_before_mb`). Loss: the same config run by each method for `--rounds` rounds on
the local runtime (same data, sampling, seeds), final test loss and bytes per client per round.

`--shape smollm2-360m` (or `smollm2-1.7b`) measures memory (not loss) on a larger member of the
model's family: its published architecture with random weights (memory does not depend on the values, and
nothing may be downloaded), the built-in tokenizer, written to a temporary directory. It shows
how the ratio moves as the layers outweigh what every client holds regardless (the interpreter,
torch, the fp32 embedding and head).

    .venv/bin/python benchmarks/zorba_memory.py [--config configs/quickstart.yaml] [--steps 3] [--rounds 4]
        [--skip-loss] [--shape smollm2-360m|smollm2-1.7b] [--baselines fedmezo,...] [key=value ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import results_header
from zofed.llm.shapes import SHAPES
from zofed.runtime.prepare import CHILD_ENV as PROFILE_ENV

CHILD_ENV = {**os.environ, **PROFILE_ENV}
FULL = ["trainable.mode=full", "clients=3", "clients_per_round=3", "zorba.device_profile=mixed"]
BASELINES = {
    "fedmezo": ["fedmezo.upload=seeds", "fedmezo.directions=pool"],
    "fedkseed": ["fedkseed.directions=pool"],
    "fedavg": ["fedavg.optimizer=sgd"],
}
ZO_LR = ["fedmezo.lr=1e-5", "fedmezo.mu=1e-3", "fedkseed.lr=1e-5", "fedkseed.mu=1e-3", "zorba.lr=1e-5", "zorba.mu=1e-3",
         "fedavg.lr=1e-5"]


def server_downlink(config_json: str, client: int, downlink: Path) -> dict:
    """The server's side, in a process of its own: the round-1 downlink to `client`, written to `downlink`,
    and with a replay downlink the round-2 one to `<downlink>.replay` (round 1 played with every client here).

    Returns what the client process needs to know besides the bytes (for ZorBA: its plan).
    """
    from zofed.algorithms import build_algorithm
    from zofed.algorithms.zorba import current_plan
    from zofed.config import parse_config
    from zofed.runtime.client import KeptStore
    from zofed.runtime.codec import encode
    from zofed.runtime.driver import run_round
    from zofed.runtime.experiment import build_experiment

    config = parse_config(json.loads(config_json))
    experiment = build_experiment(config)
    replays = getattr(config.algorithm_settings, "downlink", "weights") == "replay"
    num_layers, weights = experiment.loaded.num_layers, experiment.view.state_dict()
    if not replays:
        del experiment  # the server holds its state, not a model; a large model cannot have both here
        gc.collect()
    method = build_algorithm(config.algorithm, config.algorithm_settings)
    state = method.init(weights, config.seed)
    del weights
    gc.collect()
    downlink.write_bytes(encode(method.configure(state, 1, [client])[0]))
    if replays:
        with tempfile.TemporaryDirectory(prefix="zofed-kept-") as kept:
            state, _ = run_round(experiment, method, state, 1, KeptStore(Path(kept)))
        [steady] = method.configure(state, 2, [client])
        if steady.kind != "replay":
            raise RuntimeError(f"client {client}'s round-2 downlink is {steady.kind}, not the records to replay")
        replay_path(downlink).write_bytes(encode(steady))
    if config.algorithm != "zorba":
        return {}
    plan = current_plan(state.info)
    active = plan["active"][client]
    return {"active_blocks": active, "budget_mb": plan["budgets_mb"][client], "predicted_mb": plan["predicted_mb"][client],
            "lower": [layer for layer in range(num_layers) if layer not in active]}


def replay_path(downlink: Path) -> Path:
    return downlink.with_name(downlink.name + ".replay")


def kept_path(downlink: Path) -> Path:
    return downlink.with_name("kept.safetensors")  # the client's disk


def client_peak(config_json: str, client: int, downlink: Path, plan: dict) -> dict:
    """The client's round in this (fresh) process, from the downlink's bytes as they would arrive;
    its kept copy (if it keeps one) in a file beside them."""
    from zofed.algorithms import build_algorithm
    from zofed.dtypes import torch_dtype
    from zofed.config import parse_config
    from zofed.runtime.client import KeptFile
    from zofed.runtime.experiment import build_experiment
    from zofed.runtime.prepare import client_round_peak

    config = parse_config(json.loads(config_json))
    experiment = build_experiment(config)
    method = build_algorithm(config.algorithm, config.algorithm_settings)
    lower = plan.pop("lower", None)
    dtype = torch_dtype(config.algorithm_settings.inactive_dtype) if lower is not None else None
    outbox = [downlink.read_bytes()]
    gc.collect()
    _, peak = client_round_peak(experiment, method, outbox, client, lower, dtype, KeptFile(kept_path(downlink)))
    return {"algorithm": config.algorithm, "client": client, **peak, "trainable_params": experiment.view.numel(),
            **plan}


def write_shape(shape: str, directory: Path) -> Path:
    """A random-weight model of `shape` (and the built-in tokenizer) saved under `directory`.

    Saved to a file rather than built in each process (`model=shape:NAME`), so the clients load
    it from a memory-mapped weight file as they would a real checkpoint.
    """
    import torch

    from zofed.llm.models import SMOLLM2, load_tokenizer
    from zofed.llm.shapes import build_shape

    target = directory / shape
    build_shape(shape, torch.bfloat16).save_pretrained(target)  # stored as the family's checkpoints are
    load_tokenizer(SMOLLM2).save_pretrained(target)
    return target


def run_child(config, client: int) -> dict:
    """The server's downlink in one process, then the client's round in another (each fresh)."""
    with tempfile.TemporaryDirectory(prefix="zofed-zorba-memory-") as scratch:
        config_path, downlink = Path(scratch) / "config.json", Path(scratch) / "downlink.bin"
        config_path.write_text(json.dumps(config.to_dict()))

        def child(role: str, *extra: str) -> dict:
            output = subprocess.run([sys.executable, __file__, role, str(config_path), str(client), str(downlink), *extra],
                                    check=True, capture_output=True, text=True, env=CHILD_ENV).stdout
            return json.loads(output.strip().splitlines()[-1])

        plan = child("--server")
        first = child("--client", json.dumps(plan))
        if not replay_path(downlink).is_file():
            return first
        downlink.unlink()
        replay_path(downlink).rename(downlink)  # round 2 arrives, the client's kept file from round 1 still on its disk
        steady = child("--client", json.dumps(plan))
        return {**first, "first_contact_peak_rss_mb": first["peak_rss_mb"], "replay_peak_rss_mb": steady["peak_rss_mb"],
                "peak_rss_mb": max(first["peak_rss_mb"], steady["peak_rss_mb"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--skip-loss", action="store_true")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="memory only, on this architecture with random weights")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="comma-separated; backprop FedAvg at 1.7B does not fit this machine's memory")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/zorba_memory[_<shape>].json")
    parser.add_argument("--one-client", nargs=2, metavar=("CONFIG_JSON", "CLIENT"),
                        help="only this client's round (server and client processes); prints its row")
    parser.add_argument("--server", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.one_client:
        from zofed.config import parse_config

        config = parse_config(json.loads(Path(args.one_client[0]).read_text()))
        print(json.dumps(run_child(config, int(args.one_client[1]))))
        return
    if args.server:
        print(json.dumps(server_downlink(Path(args.server[0]).read_text(), int(args.server[1]), Path(args.server[2]))))
        return
    if args.client:
        config_path, client, downlink, plan = args.client
        print(json.dumps(client_peak(Path(config_path).read_text(), int(client), Path(downlink), json.loads(plan))))
        return

    from zofed.config import load_config, overrides_read_by
    from zofed.runtime.driver import run_experiment
    from zofed.runtime.prepare import prepared

    header = results_header.begin()
    baselines = args.baselines.split(",")
    if "fedmezo" not in baselines or not set(baselines) <= set(BASELINES):
        parser.error(f"--baselines: fedmezo (the reference) and any of {', '.join(BASELINES)}")
    shape_dir = None
    if args.shape:
        shape_dir = tempfile.TemporaryDirectory(prefix="zofed-shape-")
        model_dir = write_shape(args.shape, Path(shape_dir.name))
        args.overrides = [*args.overrides, f"model={model_dir}"]
        args.skip_loss = True  # random weights: the loss says nothing
    out = Path(args.out or f"benchmarks/results/zorba_memory{'_' + args.shape if args.shape else ''}.json")
    common = [*FULL, *ZO_LR, f"local.local_steps={args.steps}", *args.overrides]
    zorba_config = prepared(load_config(args.config, overrides_read_by("zorba", [*common, "algorithm=zorba"])))
    profile = zorba_config.algorithm_settings.memory_profile
    print(f"profile: base {profile.base_mb:.0f} MB, block {profile.block_mb[0]:.1f} MB x {len(profile.block_mb)}",
          flush=True)
    memory, configs = [], {"zorba": zorba_config.to_dict()}
    for name in baselines:
        extra = BASELINES[name]
        configs[name] = load_config(args.config, overrides_read_by(name, [*common, *extra, f"algorithm={name}"]))
        memory.append(run_child(configs[name], 0))
        configs[name] = configs[name].to_dict()
        print(f"{name:9s} peak {memory[-1]['peak_rss_mb']:8.1f} MB", flush=True)
    for client in range(3):
        memory.append(run_child(zorba_config, client))
        row = memory[-1]
        steps = (f" (first contact {row['first_contact_peak_rss_mb']:.1f}, replay {row['replay_peak_rss_mb']:.1f})"
                 if "replay_peak_rss_mb" in row else "")
        print(f"zorba c{client}  peak {row['peak_rss_mb']:8.1f} MB{steps}  budget {row['budget_mb']:8.1f} MB  "
              f"{len(row['active_blocks'])} active blocks", flush=True)
    fedmezo_peak = next(row["peak_rss_mb"] for row in memory if row["algorithm"] == "fedmezo")
    zorba_rows = [row for row in memory if row["algorithm"] == "zorba"]
    ratios = {
        f"zorba c{row['client']} / fedmezo full": round(row["peak_rss_mb"] / fedmezo_peak, 3) for row in zorba_rows
    } | {f"{row['algorithm']} / fedmezo full": round(row["peak_rss_mb"] / fedmezo_peak, 3) for row in memory
         if row["algorithm"] in BASELINES and row["algorithm"] != "fedmezo"}
    within_budget = all(row["peak_rss_mb"] <= row["budget_mb"] for row in zorba_rows)

    losses = {}
    if not args.skip_loss:
        with tempfile.TemporaryDirectory() as root:
            for name in ["zorba", *baselines]:
                extra = BASELINES.get(name, [])
                config = load_config(args.config, overrides_read_by(name, [
                    *common, *extra, f"algorithm={name}", f"rounds={args.rounds}", f"output_dir={root}", f"name={name}",
                    "eval.accuracy_examples=0"]))
                if name == "zorba":
                    config = zorba_config.model_copy(update={"rounds": args.rounds, "output_dir": root, "name": name,
                                                             "eval": config.eval})
                summary = run_experiment(config, show_progress=False)
                per_round = config.sampled_per_round() * summary["rounds"]
                losses[name] = {"initial_test_loss": summary["initial_test_loss"],
                                "final_test_loss": summary["final_test_loss"],
                                "bytes_up_per_client_round": summary["bytes_up"] / per_round,
                                "bytes_down_per_client_round": summary["bytes_down"] / per_round,
                                "wall_s": summary["wall_s"]}
                print(f"{name:9s} test loss {summary['initial_test_loss']:.4f} -> {summary['final_test_loss']:.4f}  "
                      f"up {losses[name]['bytes_up_per_client_round']:.0f} B/client/round", flush=True)
    for name, value in ratios.items():
        print(f"{name:28s} {value}")
    print(f"every ZorBA client within its budget: {within_budget}")
    if shape_dir is not None:
        common = [item for item in common if not item.startswith("model=")] + [f"model=<{args.shape}, random weights>"]
        shape_dir.cleanup()
    if shape_dir is not None:  # the random-weight model's directory is gone: name the shape instead
        configs = {name: {**config, "model": f"<{args.shape}, random weights>"} for name, config in configs.items()}
    result = results_header.end(header, configs, {
        "config": args.config, "shape": args.shape, "overrides": common, "steps": args.steps,
        "profile": profile.model_dump(), "memory": memory, "ratios": ratios,
        "zorba_within_budget": within_budget, "loss_at_equal_rounds": losses, "rounds": args.rounds})
    results_header.write(out, result)


if __name__ == "__main__":
    main()
