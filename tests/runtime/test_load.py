"""1,000 clients in the local runtime: memory and per-round work follow the sampled clients, not the total."""

import importlib.util
from pathlib import Path

import pytest
from safetensors.torch import load_file

import zofed.runtime.driver as driver
import zofed.runtime.round as round_body
from zofed.checkpoint import load_latest_checkpoint
from zofed.runtime.client import KeptStore
from zofed.runtime.driver import round_rows

from .helpers import tiny_config

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "load_clients.py"
ROUNDS = 10
# A kept copy of the trained layers is 0.6 MB; 1,000 clients over 10 rounds keep ~95 of them, 100
# clients ~65. Resident memory of runs that keep none differs by a few MB of allocator noise.
TOLERANCE_MB = 15.0


def load_benchmark():
    spec = importlib.util.spec_from_file_location("load_clients", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_is_the_same_at_100_and_1000_clients_and_the_measure_sees_kept_copies():
    benchmark = load_benchmark()
    small, large = benchmark.measure(100, ROUNDS), benchmark.measure(1000, ROUNDS)
    assert small["client_rounds"] == large["client_rounds"] == ROUNDS * benchmark.SAMPLED
    assert abs(large["rss_peak_mb"] - small["rss_peak_mb"]) < TOLERANCE_MB, (small, large)
    assert large["rss_growth_mb"] < TOLERANCE_MB, large
    # the same run with every client's copy resident in the server process fails the bound above
    in_memory = benchmark.measure(1000, ROUNDS, kept_in_memory=True)
    assert in_memory["rss_growth_mb"] > 2 * TOLERANCE_MB, in_memory


def count_calls(monkeypatch, owner, name: str, counts: dict) -> None:
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


@pytest.mark.parametrize("clients", [100, 1000])
def test_a_round_touches_only_its_sampled_clients(tmp_path, monkeypatch, clients):
    rounds, sampled, max_lag = 4, 10, 2
    config = tiny_config(tmp_path, "fedmezo", f"rounds={rounds}", f"clients={clients}", f"clients_per_round={sampled}",
                         "data.limit=1100", "local.local_steps=1", "local.batch_size=1", f"eval.every={rounds}",
                         "fedmezo.upload=seeds", "fedmezo.downlink=replay", f"fedmezo.max_lag={max_lag}")
    counts: dict[str, int] = {}
    for name in ("client_round", "encode_with_sizes"):
        count_calls(monkeypatch, round_body, name, counts)
    count_calls(monkeypatch, KeptStore, "client", counts)
    driver.run_experiment(config, show_progress=False)

    contacts = rounds * sampled
    assert counts == {"client_round": contacts, "encode_with_sizes": contacts, "client": contacts}
    seen = {client for row in round_rows(config.run_dir) for client in row["clients"]}
    assert {int(path.name) for path in (config.run_dir / "clients").iterdir()} == seen
    checkpoint = load_latest_checkpoint(config.run_dir / "checkpoints")
    # the copies live with the clients, not in every checkpoint
    tensors = load_file(str(config.run_dir / "checkpoints" / f"ckpt-{rounds:05d}" / "state.safetensors"))
    assert all(name.startswith(("weights/", "buffers/")) for name in tensors)
    # the server remembers only clients that can still replay: repliers of the last max_lag + 1 rounds
    assert len(checkpoint.state.info["client_versions"]) <= (max_lag + 1) * sampled
    assert checkpoint.state.info["history"] == {}  # frozen learning rates keep nothing per client
