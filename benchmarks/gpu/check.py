"""The GPU check: the scale ladder and a FedMeZO-vs-FedAvg client-memory comparison, as one JSON file.

Made for a machine with PyTorch and CUDA but no internet, no Flower and no GGUF support: the
models are ladder shapes with random weights (`zofed.llm.shapes`) fed random token ids, so
nothing is downloaded or tokenised. Each measurement runs in a fresh process (its memory peaks
are its own) and the JSON is rewritten after each one, so a run cut short keeps what finished;
once `--budget-s` is spent the remaining measurements are listed as skipped. A measurement that
fails records its error and the check goes on.

    python benchmarks/gpu/check.py --out OUT_DIR/gpu_check.json [--device auto] [--shapes ladder]
        [--memory-shape llama-3.2-1b] [--budget-s 420]

CI runs it on the CPU with `--shapes tiny --memory-shape tiny --in-process` so it never rots.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from zofed.algorithms import ALGORITHMS, ClientEnv, build_algorithm
from zofed.bench import bench_step, load_bench_model
from zofed.device import describe_device, peak_device_memory_mb, reset_peak_device_memory, resolve_device, synchronize
from zofed.llm import LoraSettings, apply_lora, trainable_view
from zofed.llm.models import model_losses
from zofed.llm.shapes import LADDER, SHAPE_PREFIX, SHAPES, shape_parameters
from zofed.llm.split import ModelSplit
from zofed.machine import describe_machine
from zofed.metrics import peak_rss_mb, reset_peak_rss
from zofed.runtime.codec import decode, encode

# (case, trainable mode, algorithm, its settings): what one client's round costs with each method.
MEMORY_CASES = [
    ("inference", "lora", "fedmezo", {}),
    ("fedmezo", "lora", "fedmezo", {"directions": "pool"}),
    ("fedavg", "lora", "fedavg", {"optimizer": "adamw"}),
    ("inference", "full", "fedmezo", {}),
    ("fedmezo-seeds", "full", "fedmezo", {"upload": "seeds", "directions": "pool"}),
    ("fedavg", "full", "fedavg", {"optimizer": "adamw"}),
]


def default_dtype(device: torch.device) -> str:
    """bf16 where the device has it, fp16 on a GPU without it, fp32 on the CPU (the numbers CI checks)."""
    if device.type == "cpu":
        return "fp32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def client_memory(shape: str, case: str, mode: str, algorithm: str, settings: dict, dtype: str, device: str,
                  steps: int, batch_size: int, seq_len: int) -> dict:
    """Peak memory of one client's round (decode the downlink, train `steps` local steps) on a random-weight shape."""
    torch_device = resolve_device(device)
    loaded = load_bench_model(SHAPE_PREFIX + shape, dtype, torch_device)
    if mode == "lora":
        loaded = apply_lora(loaded, LoraSettings(r=8, alpha=16), seed=0)
    view = trainable_view(loaded, mode)
    model = loaded.model
    method = build_algorithm(algorithm, ALGORITHMS[algorithm].settings(**settings))
    downlink = encode(method.configure(method.init(view.state_dict(), 0), 1, [0])[0])
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=generator) for _ in range(steps)]

    loss, loss_for_backward = model_losses(model)
    by_pointer = {param.data_ptr(): param for param in model.parameters()}
    env = ClientEnv(
        client_id=0, seed=1, names=view.names, tensors=view.tensors,
        parameters=tuple(by_pointer[tensor.data_ptr()] for tensor in view.tensors),
        batches=({"input_ids": ids.to(torch_device), "labels": ids.to(torch_device)} for ids in batches),
        loss=loss, loss_for_backward=loss_for_backward, num_examples=steps * batch_size,
        split=ModelSplit(model, view.tensors),
    )
    resident_mb = torch.cuda.memory_allocated(torch_device) / 2**20 if torch_device.type == "cuda" else None
    reset_peak_rss()
    reset_peak_device_memory(torch_device)
    started = time.perf_counter()
    if case == "inference":
        for batch in env.batches:
            env.loss(batch)
            env.loss(batch)
    else:
        method.train(decode(downlink), env)
    synchronize(torch_device)
    seconds = time.perf_counter() - started
    device_peak = peak_device_memory_mb(torch_device)
    return {
        "shape": shape, "case": case, "mode": mode, "dtype": dtype, "device": str(torch_device),
        "trainable_params": view.numel(), "batch": f"{batch_size}x{seq_len}", "local_steps": steps,
        "seconds": round(seconds, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
        "resident_device_mb": None if resident_mb is None else round(resident_mb, 1),
        "peak_device_mb": None if device_peak is None else round(device_peak, 1),
    }


def _measure(work: Callable[..., dict], arguments: tuple, fresh_process: bool) -> dict:
    try:
        if not fresh_process:
            return work(*arguments)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(work, arguments)
    except Exception as error:  # noqa: BLE001 - one failed measurement must not lose the others
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                "traceback": traceback.format_exc(limit=3)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: bf16, fp16 without bf16, fp32 on the CPU)")
    parser.add_argument("--shapes", default="ladder", help=f"comma-separated ladder shapes or `ladder` ({', '.join(LADDER)})")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--memory-shape", default="llama-3.2-1b", help="shape of the client-memory comparison")
    parser.add_argument("--steps", type=int, default=3, help="local steps per client round in the comparison")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=1 << 24)
    parser.add_argument("--no-reference", action="store_true", help="skip the reference MeZO step")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no measurement after this many seconds")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (tests; peaks then overlap)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    device = resolve_device(args.device)
    dtype = args.dtype or default_dtype(device)
    shapes = list(LADDER) if args.shapes == "ladder" else [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [shape for shape in [*shapes, args.memory_shape] if shape not in SHAPES]
    if unknown:
        print(f"check.py: error: unknown shapes {unknown}; use {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": describe_machine(), "device": describe_device(device), "dtype": dtype,
        "settings": {key: value for key, value in vars(args).items() if key != "out"},
        "ladder": [], "client_memory": [], "skipped": [], "wall_s": None,
    }

    def save() -> None:
        document["wall_s"] = round(time.perf_counter() - started, 1)
        staging = out.with_name(f".{out.name}.tmp")
        staging.write_text(json.dumps(document, indent=2) + "\n")
        staging.replace(out)

    def run(section: str, label: dict, work: Callable[..., dict], arguments: tuple) -> None:
        if time.perf_counter() - started > args.budget_s:
            document["skipped"].append({"section": section, **label})
        else:
            row = _measure(work, arguments, not args.in_process)
            document[section].append({**label, **row})
            print(json.dumps({"section": section, **label, **{k: v for k, v in row.items() if k != "traceback"}}), flush=True)
        save()

    memory_shape = args.memory_shape
    for case, mode, algorithm, settings in MEMORY_CASES:
        run("client_memory", {"shape": memory_shape, "case": case, "mode": mode,
                              "params": shape_parameters(memory_shape)}, client_memory,
            (memory_shape, case, mode, algorithm, settings, dtype, str(device), args.steps, args.batch_size, args.seq_len))
    for shape in shapes:
        for mode in args.modes.split(","):
            run("ladder", {"shape": shape, "mode": mode}, bench_step,
                (SHAPE_PREFIX + shape, mode, dtype, args.batch_size, args.seq_len, args.repeats, args.pool_size,
                 str(device), not args.no_reference))
    save()
    failed = [row for section in ("ladder", "client_memory") for row in document[section] if "error" in row]
    print(f"wrote {out}: {len(document['ladder'])} ladder rows, {len(document['client_memory'])} memory rows, "
          f"{len(failed)} failed, {len(document['skipped'])} skipped, {document['wall_s']} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
