"""Each method averages its clients as its own official code does, and the choice is a setting."""

import pytest
import torch

from zofed.algorithms import ALGORITHMS, build_algorithm
from zofed.algorithms.weighting import client_shares
from zofed.messages import Message

DEFAULTS = {"fedavg": "examples", "fedmezo": "uniform", "fedkseed": "examples", "fedkseed-pro": "examples",
            "decomfl": "uniform", "fedspzo": "examples", "zorba": "examples", "gamlpp": "examples",
            "fedzo": "uniform"}


def test_every_method_declares_its_weighting_and_default():
    assert set(DEFAULTS) == set(ALGORITHMS)
    for name, expected in DEFAULTS.items():
        field = ALGORITHMS[name].settings.model_fields["weighting"]
        assert field.default == expected, name


def reply(scalars, examples):
    return Message(kind="seeds", round=1, scalars=tuple(scalars), metrics={"num_examples": examples, "train_loss": 1.0})


def test_shares_sum_to_one():
    replies = [(0, reply([], 3)), (1, reply([], 1))]
    assert client_shares(replies, "uniform") == [0.5, 0.5]
    assert client_shares(replies, "examples") == [0.75, 0.25]


@pytest.mark.parametrize("name, settings, mean", [
    ("decomfl", {}, 2.0),  # unweighted, as the official DeComFL server
    ("decomfl", {"weighting": "examples"}, 1.5),
    ("fedkseed", {"num_seeds": 1}, 1.5),  # by data size, as the official FedKSeed server
    ("fedkseed", {"num_seeds": 1, "weighting": "uniform"}, 2.0),
])
def test_scalar_methods_average_as_their_official_code(name, settings, mean):
    """g = 1 from 3 examples and g = 3 from 1 example: the update equals one client's with g = mean."""
    algorithm = build_algorithm(name, {"lr": 0.1, "downlink": "weights", **settings})
    state = algorithm.init({"w": torch.zeros(5)}, seed=0)
    both = algorithm.aggregate(state, 1, [(0, reply([1.0], 3)), (1, reply([3.0], 1))])
    single = algorithm.aggregate(state, 1, [(0, reply([mean], 7))])
    assert torch.allclose(both.weights["w"], single.weights["w"], atol=1e-7)
    assert not torch.equal(both.weights["w"], state.weights["w"])


def test_fedavg_weights_by_examples_by_default():
    algorithm = build_algorithm("fedavg")
    state = algorithm.init({"w": torch.zeros(1)}, seed=0)
    replies = [(c, Message(kind="weights", round=1, tensors={"w": torch.tensor([v])},
                           metrics={"num_examples": n, "train_loss": 1.0})) for c, v, n in ((0, 1.0, 3), (1, 5.0, 1))]
    assert algorithm.aggregate(state, 1, replies).weights["w"].item() == pytest.approx(2.0)
    uniform = build_algorithm("fedavg", {"weighting": "uniform"})
    assert uniform.aggregate(state, 1, replies).weights["w"].item() == pytest.approx(3.0)


TOY_SETTINGS = {
    "fedavg": {"lr": 0.02, "optimizer": "sgd"},
    "fedmezo": {"lr": 0.02, "mu": 1e-3},
    "fedkseed": {"lr": 0.02, "mu": 1e-3, "num_seeds": 16},
    "fedkseed-pro": {"lr": 0.02, "mu": 1e-3, "num_seeds": 16},
    "decomfl": {"lr": 0.02, "mu": 1e-3},
    "gamlpp": {"lr": 0.02, "mu": 1e-3},
}


@pytest.mark.parametrize("name", sorted(TOY_SETTINGS))
def test_uniform_ignores_example_counts_and_examples_follows_them(name):
    """The same replies with other example counts: uniform gives the same model, examples another."""
    from dataclasses import replace

    from .toy import ToyProblem, train_client

    results = {}
    for weighting in ("uniform", "examples"):
        algorithm = build_algorithm(name, {**TOY_SETTINGS[name], "weighting": weighting})
        problem = ToyProblem()
        state = algorithm.init(problem.initial(), seed=0)
        replies = [(c, train_client(algorithm, problem, m, c, 10 + c)) for c, m in enumerate(algorithm.configure(state, 1, [0, 1]))]
        recounted = [(c, replace(r, metrics={**r.metrics, "num_examples": 1000.0 * (c + 1)})) for c, r in replies]
        results[weighting] = [algorithm.aggregate(state, 1, batch).weights["weight"] for batch in (replies, recounted)]
    assert torch.equal(*results["uniform"])
    assert not torch.allclose(*results["examples"])
