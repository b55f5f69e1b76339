"""Does a bf16/fp16 ZO update survive, and how far does a client's own model drift from the server's replay?

Deterministic numbers, no timings. One tensor of 2^18 weights at |θ| ≈ m (log-normal spread around m,
random signs, rounded to the dtype), the loss L(θ) = w·θ with a fixed random w of norm ‖∇L‖ (1 and 10:
g ≈ ‖∇L‖·N(0, 1), an update lr·|g| ~ 1e-5 or 1e-4 a step), the published μ = 1e-3 and lr = 1e-5, 30 local
steps of `zo_step` with pool directions. Then:

  client   the client's tensor after its 30 steps (perturb, restore, update in place)
  server   the client's records (seed, coeff) replayed by `replay_` on the starting tensor, same dtype
  exact    the same records applied in float64: θ0 + U, U = Σ_t coeff_t·z_t

and per (‖∇L‖, dtype, m):

  update_rms        rms(U), the update the records describe
  drift             rms(client − server) / rms(U): the issue's client–server drift
  kept_server       <server − θ0, U> / <U, U>: the part of the update the server's model carries (1 = all, 0 = none)
  kept_client       the same for the client's own model
  error_server      rms(server − θ0 − U) / rms(U): what the server's model carries besides the update
  mismatched        fraction of weights where client and server differ

`--before-src DIR` also measures the code in DIR (a checkout's src/, e.g. the commit before stochastic
rounding) in a subprocess and stores it under "before" next to this checkout's "after".

    .venv/bin/python benchmarks/low_precision_drift.py [--before-src ../main/src] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

NUMEL = 1 << 18
STEPS, MU, LR = 30, 1e-3, 1e-5
MAGNITUDES = (0.02, 1.0)
DTYPES = ("bfloat16", "float16")


def measure(grad_norms: list[float]) -> list[dict]:
    import torch

    from zofed.zo import PoolDirections, Scratch, replay_, zo_step

    sampler, rows = PoolDirections(), []
    generator = torch.Generator().manual_seed(0)
    spread = torch.exp(0.3 * torch.randn(NUMEL, generator=generator, dtype=torch.float64))
    signs = torch.where(torch.rand(NUMEL, generator=generator) < 0.5, -1.0, 1.0).double()
    direction = torch.randn(NUMEL, generator=generator, dtype=torch.float64)
    for grad_norm, dtype_name in [(g, d) for g in grad_norms for d in DTYPES]:
        w = direction * (grad_norm / direction.norm())
        dtype = getattr(torch, dtype_name)
        for magnitude in MAGNITUDES:
            start = (magnitude * spread * signs).to(dtype)
            client = [start.clone()]
            records, loss = [], partial(linear_loss, w, client)
            for step in range(STEPS):
                result = zo_step(client, loss, 1000 + step, MU, LR, sampler, Scratch())
                records.append((result.seed, result.coeff))
            server = [start.clone()]
            replay_(server, records, sampler, Scratch())
            update = torch.zeros(NUMEL, dtype=torch.float64)
            for seed, coeff in records:
                update += coeff * sampler.fill_(torch.empty(NUMEL), seed, 0).double()
            base, moved_server, moved_client = start.double(), server[0].double(), client[0].double()
            norm2, rms = float(update @ update), float(update.pow(2).mean().sqrt())
            rows.append({
                "grad_norm": grad_norm,
                "dtype": dtype_name,
                "magnitude": magnitude,
                "ulp_at_magnitude": float(torch.finfo(dtype).eps * magnitude),
                "update_rms": rms,
                "drift": float((moved_client - moved_server).pow(2).mean().sqrt()) / rms,
                "kept_server": float((moved_server - base) @ update) / norm2,
                "kept_client": float((moved_client - base) @ update) / norm2,
                "error_server": float((moved_server - base - update).pow(2).mean().sqrt()) / rms,
                "mismatched": float((client[0] != server[0]).double().mean()),
            })
    return rows


def linear_loss(w, tensors) -> float:
    return float(w @ tensors[0].double())


def source_commit(src: Path) -> str:
    found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True).stdout.strip()
    return found or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grad-norms", type=float, nargs="+", default=[1.0, 10.0], help="‖∇L‖ of the linear loss")
    parser.add_argument("--before-src", help="a checkout's src/ to measure as 'before', in a subprocess")
    parser.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)  # the subprocess's mode
    parser.add_argument("--out", default="benchmarks/results/low_precision_drift.json")
    args = parser.parse_args()
    if args.rows_only:
        print(json.dumps(measure(args.grad_norms)))
        return
    import results_header

    header = results_header.begin()
    document = {"setup": {"numel": NUMEL, "steps": STEPS, "mu": MU, "lr": LR, "grad_norms": args.grad_norms,
                          "directions": "pool", "loss": "linear, w·θ"},
                "after": {"commit": results_header.commit(), "rows": measure(args.grad_norms)}}
    if args.before_src:
        src = Path(args.before_src).resolve()
        output = subprocess.run([sys.executable, __file__, "--rows-only", "--grad-norms", *map(str, args.grad_norms)],
                                env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True, check=True)
        document["before"] = {"commit": source_commit(src), "rows": json.loads(output.stdout)}
    results_header.write(args.out, results_header.end(header, {}, document))
    for label in ("before", "after"):
        for row in document.get(label, {}).get("rows", []):
            print(f"{label:6} ‖∇L‖ {row['grad_norm']:<4} {row['dtype']:8} |θ|≈{row['magnitude']:<4} drift {row['drift']:8.2f}× update  "
                  f"kept server {row['kept_server']:6.3f} client {row['kept_client']:6.3f}  "
                  f"error {row['error_server']:7.2f}  mismatched {row['mismatched']:.4f}")


if __name__ == "__main__":
    main()
