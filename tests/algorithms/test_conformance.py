"""Every registered algorithm through the same checks, on tiny-llama via the local runtime."""

import pytest
import torch

from zofed.algorithms import ALGORITHMS
from zofed.runtime.driver import run_local

from ..runtime.helpers import CONFORMANCE_SETTINGS, final_weights, tiny_config

ALL = sorted(ALGORITHMS)


def test_every_algorithm_has_conformance_settings():
    assert set(ALL) == set(CONFORMANCE_SETTINGS)


@pytest.mark.parametrize("algorithm", ALL)
def test_loss_falls_and_a_killed_run_resumes_to_identical_weights(algorithm, tmp_path):
    # One uninterrupted run and one killed after round 1 and resumed: together they check that the
    # loss falls, that two runs of a config are deterministic and that resuming loses nothing
    # (the second run is a fresh process state until round 1, so any nondeterminism shows too).
    uninterrupted = tiny_config(tmp_path / "full", algorithm)
    first = run_local(uninterrupted, show_progress=False)
    assert first["final_eval_loss"] < first["initial_eval_loss"] * 0.995  # tiny-llama is random: a small, clear drop
    assert first["bytes_up"] > 0 and first["bytes_down"] > 0
    interrupted = tiny_config(tmp_path / "cut", algorithm)
    assert run_local(interrupted, show_progress=False, stop_after_round=1) is None
    second = run_local(interrupted, resume=True, show_progress=False)
    assert second["final_eval_loss"] == first["final_eval_loss"]
    a, b = final_weights(uninterrupted), final_weights(interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert second["rounds"] == 3
    lines = (interrupted.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
