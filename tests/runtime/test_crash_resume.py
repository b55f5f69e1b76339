"""kill -9 the local runtime at random points, resume until done: the same run as never killed.

Kills land anywhere: during model loading, mid-round, between writing metrics and the
checkpoint, inside a checkpoint write. Weights must be bit-identical and the metrics history
(losses, byte ledger, forward passes, sampled clients) equal, timings aside.
"""

import json
import random
import shutil
import signal
import subprocess
import sys
import time

import torch
import yaml

from .helpers import final_weights, tiny_config

TIMING = {"seconds", "time", "peak_rss_mb", "peak_device_mb"}


def without_timings(row: dict) -> dict:
    row = {k: v for k, v in row.items() if k not in TIMING}
    if "per_client" in row:  # a round row, not the before-training or final evaluation's
        row["per_client"] = [{k: v for k, v in c.items() if k not in TIMING} for c in row["per_client"]]
    return row


def run_cli(config, path, resume: bool = False) -> subprocess.Popen:
    path.write_text(yaml.safe_dump(config.to_dict()))
    command = [sys.executable, "-m", "zofed.cli", "run", str(path), "--no-progress"] + (["--resume", "--overwrite"] if resume else [])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_at_random_points_then_resumed_equals_an_uninterrupted_run(tmp_path):
    # 8 local steps, not the helpers' 20: rounds stay long enough to be killed in (mid-round kills happen), shorter
    # rounds make the checkpoint writes a larger share of the run, and every attempt costs less.
    common = ("rounds=5", "local.local_steps=8", "fedmezo.upload=seeds", "fedmezo.downlink=replay", "clients=3",
              "clients_per_round=2")
    reference = tiny_config(tmp_path / "reference", "fedmezo", *common)
    started = time.perf_counter()
    assert run_cli(reference, tmp_path / "reference.yaml").wait() == 0
    full_run_s = time.perf_counter() - started  # start-up included, as each resumed attempt pays it

    killed = tiny_config(tmp_path / "killed", "fedmezo", *common)
    rng = random.Random(1234)
    kills, finished = 0, False
    for _ in range(40):
        process = run_cli(killed, tmp_path / "killed.yaml", resume=killed.run_dir.exists())
        started = time.perf_counter()
        try:
            # the first three attempts are meant to be cut short; later ones get time enough to finish
            process.wait(timeout=rng.uniform(0.15, 0.6 if kills < 3 else 1.2) * full_run_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
            continue
        assert process.returncode == 0, process.stderr.read().decode()
        if kills < 3:
            # The machine got faster than when the reference was timed (another process ended), so the run
            # outran its kills: start the killed run over rather than pass unkilled.
            if kills == 0:  # an uninterrupted run: its time is the new reference
                full_run_s = time.perf_counter() - started
            shutil.rmtree(killed.run_dir)
            kills = 0
            continue
        finished = True
        break
    assert finished and kills >= 3  # it really was killed, several times

    a, b = final_weights(reference), final_weights(killed)
    assert all(torch.equal(a[name], b[name]) for name in a)
    rows = [[without_timings(json.loads(line)) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
            for config in (reference, killed)]
    assert rows[0] == rows[1]
    summaries = [json.loads((config.run_dir / "summary.json").read_text()) for config in (reference, killed)]
    for key in ("final_eval_loss", "final_test_loss", "bytes_up", "bytes_down", "forward_passes", "rounds_run"):
        assert summaries[0][key] == summaries[1][key], key
