"""The real model end to end: SmolLM2, 2 clients × 2 rounds, losses pinned.

Pinned on this machine's CPU build of torch 2.13; the tolerance absorbs thread-count-dependent
reduction order, not algorithmic change: a different sampler, step or data order moves these
numbers by far more.
"""

from pathlib import Path

import pytest

from zofed.config import load_config
from zofed.runtime.driver import run_experiment

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"

PINNED = {
    "fedmezo": {"initial_eval_loss": 3.4851744174957275, "final_eval_loss": 3.418999671936035, "final_test_loss": 4.1935296058654785},
    "fedavg": {"initial_eval_loss": 3.4851744174957275, "final_eval_loss": 0.9712558388710022, "final_test_loss": 1.2234832048416138},
}

@pytest.mark.parametrize("algorithm", sorted(PINNED))
def test_two_clients_two_rounds_pinned_losses(algorithm, tmp_path):
    config = load_config(
        QUICKSTART,
        [
            f"algorithm={algorithm}",
            f"output_dir={tmp_path}",
            "rounds=2",
            "clients=2",
            "clients_per_round=2",
            "data.limit=200",
            "data.val_size=16",
            "data.test_size=16",
            "local.local_steps=4",
            "eval.every=1",
            "eval.val_examples=16",
            "eval.test_examples=16",
            "eval.accuracy_examples=8",
            # a method's section is overridden only for that method (an unread override is refused)
            *(["fedavg.lr=1e-3"] if algorithm == "fedavg" else []),
        ],
    )
    summary = run_experiment(config, show_progress=False)
    print({key: summary[key] for key in PINNED[algorithm]})
    for key, expected in PINNED[algorithm].items():
        assert summary[key] == pytest.approx(expected, rel=1e-3), key
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
