"""`server_optimizer` on fedmezo and fedavg: unset is plain averaging; sgd(lr=1) equals it; others differ."""

import pytest
import torch
from pydantic import ValidationError

from zofed.algorithms import build_algorithm

from .toy import ToyProblem, run_rounds

SGD_ONE = {"name": "sgd", "lr": 1.0}
CASES = [
    ("fedmezo", {"lr": 0.02, "mu": 1e-3}),
    ("fedmezo", {"lr": 0.02, "mu": 1e-3, "upload": "seeds"}),
    ("fedavg", {"lr": 0.05, "optimizer": "sgd"}),
]


@pytest.mark.parametrize("name, settings", CASES, ids=["fedmezo-weights", "fedmezo-seeds", "fedavg"])
def test_sgd_lr_one_is_plain_averaging_and_unset_keeps_no_optimiser_state(name, settings):
    plain = run_rounds(build_algorithm(name, settings), ToyProblem(), rounds=1)
    assert not any(key.startswith("serveropt/") for key in plain.buffers) and "serveropt" not in plain.info
    averaged = run_rounds(build_algorithm(name, settings | {"server_optimizer": SGD_ONE}), ToyProblem(), rounds=1)
    for tensor in plain.weights:
        assert torch.allclose(plain.weights[tensor], averaged.weights[tensor], atol=1e-6)


@pytest.mark.parametrize("name, settings", CASES, ids=["fedmezo-weights", "fedmezo-seeds", "fedavg"])
def test_adam_server_optimizer_moves_differently_and_lowers_the_loss(name, settings):
    problem = ToyProblem()
    plain = run_rounds(build_algorithm(name, settings), ToyProblem(), rounds=2)
    adam = run_rounds(build_algorithm(name, settings | {"server_optimizer": {"name": "adam", "lr": 0.05}}),
                      problem, rounds=10)
    assert adam.info["serveropt"] == {"0.count": 10}
    assert not torch.allclose(plain.weights["weight"], adam.weights["weight"], atol=1e-4)
    assert problem.global_loss(adam.weights) < 0.8 * problem.global_loss(problem.initial())


def test_fedmezo_server_optimizer_rejects_replay_downlink():
    with pytest.raises(ValidationError, match="downlink: weights"):
        build_algorithm("fedmezo", {"upload": "seeds", "downlink": "replay", "server_optimizer": SGD_ONE})
