import math

import numpy as np
import pytest
import torch

from zofed.algorithms import Rejected, Sent, build_algorithm
from zofed.algorithms.fedkseed import FedKSeedSettings, candidate_seeds, seed_probabilities
from zofed.messages import Message
from zofed.runtime.codec import encode

from .toy import ToyProblem, run_rounds, train_client


@pytest.mark.parametrize("name", ["fedkseed", "fedkseed-pro"])
def test_lowers_the_global_loss(name):
    problem = ToyProblem()
    state = run_rounds(build_algorithm(name, {"lr": 0.02, "mu": 1e-3, "num_seeds": 16}), problem, rounds=15)
    assert problem.global_loss(state.weights) < 0.7 * problem.global_loss(problem.initial())


def test_rebuild_from_initial_equals_incremental_updates():
    algorithm = build_algorithm("fedkseed", {"lr": 0.02, "mu": 1e-3, "num_seeds": 16})
    state = run_rounds(algorithm, ToyProblem(), rounds=6)
    rebuilt = algorithm.rebuild_from_initial(state)
    for name in state.weights:
        assert (rebuilt[name] - state.weights[name]).abs().max().item() <= 1e-5


def test_reply_is_k_scalars_and_small():
    algorithm = build_algorithm("fedkseed", {"num_seeds": 256})
    problem = ToyProblem()
    state = algorithm.init(problem.initial(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    reply = train_client(algorithm, problem, message, 0, 1)
    assert reply.kind == "seeds" and len(reply.scalars) == 256 and not reply.tensors
    assert sum(1 for g in reply.scalars if g != 0.0) <= 5  # 5 local steps touch at most 5 seeds
    assert len(encode(reply)) < 256 * 4 + 400


def test_candidates_are_fixed_and_pro_prefers_informative_seeds():
    assert candidate_seeds(7, 4) == candidate_seeds(7, 4) and len(set(candidate_seeds(7, 100))) == 100
    probabilities = seed_probabilities([0.0, 1.0, 4.0], [0, 1, 1])
    assert probabilities[2] > probabilities[1] > probabilities[0] and sum(probabilities) == pytest.approx(1.0)
    assert seed_probabilities([0.0, 0.0], [0, 0]) == [0.5, 0.5]


def pro_reply(used, abs_sums, steps, scalars, examples=1):
    return Message(kind="seeds", round=1, config={"used": used, "abs_sums": abs_sums, "steps": steps},
                   scalars=tuple(scalars), metrics={"num_examples": examples, "train_loss": 1.0})


def test_pro_probabilities_follow_the_official_rule_by_hand():
    """Seed histories [0], [0, 2, −4], [0, clip(5000) = 1000], [0, 0.5] over two clients, by hand.

    ψ = mean |h| = [0, 2, 500, 0.25]; min-max: [0, 0.004, 1, 0.0005]; softmax at temperature 1.
    """
    algorithm = build_algorithm("fedkseed-pro", {"num_seeds": 4})
    state = algorithm.init({"w": torch.zeros(3)}, seed=0)
    # client 0 took steps g = 2 and g = −4 on seed 1 and g = 5000 on seed 2, clipped at 1000;
    # client 1 one step g = 0.5 on seed 3; client 1's larger data must not weigh its history
    replies = [(0, pro_reply([1, 2], [6.0, 1000.0], [2, 1], [0.0, -2.0, 5000.0, 0.0], examples=1)),
               (1, pro_reply([3], [0.5], [1], [0.0, 0.0, 0.0, 0.5], examples=100))]
    state = algorithm.aggregate(state, 1, replies)
    assert state.info["abs_sums"] == [0.0, 6.0, 1000.0, 0.5] and state.info["steps"] == [0, 2, 1, 1]
    normalised = [0.0, 2 / (500 + 1e-10), 500 / (500 + 1e-10), 0.25 / (500 + 1e-10)]
    expected = [math.exp(v) / sum(math.exp(u) for u in normalised) for v in normalised]
    [message] = algorithm.configure(state, 2, [0])
    assert message.scalars == pytest.approx(expected, rel=1e-12)
    assert expected[2] == pytest.approx(math.e / (3 + math.e), rel=1e-2)  # temperature 1, not sharper


def test_pro_client_uploads_clipped_abs_sums_and_step_counts():
    algorithm = build_algorithm("fedkseed-pro", {"num_seeds": 4, "lr": 0.02, "mu": 1e-3, "clip": 1e-9})
    problem = ToyProblem()
    state = algorithm.init(problem.initial(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    reply = train_client(algorithm, problem, message, 0, 1, steps=7)
    used, sums, steps = reply.config["used"], reply.config["abs_sums"], reply.config["steps"]
    assert sum(steps) == 7 and used == sorted(used) and len(set(used)) == len(used)
    assert [j for j, g in enumerate(reply.scalars) if g != 0.0] == used
    assert np.allclose(sums, [1e-9 * n for n in steps], rtol=1e-6)  # every |g| is above the tiny clip
    plain = build_algorithm("fedkseed", {"num_seeds": 4, "lr": 0.02, "mu": 1e-3})
    [message] = plain.configure(plain.init(problem.initial(), seed=0), 1, [0])
    assert train_client(plain, ToyProblem(), message, 0, 1).config == {}  # uniform sampling needs no history


def test_published_defaults():
    settings = FedKSeedSettings()
    assert settings.num_seeds == 4096 and settings.clip == 1000.0 and settings.weighting == "examples"


def test_pro_probabilities_travel_and_are_used():
    algorithm = build_algorithm("fedkseed-pro", {"num_seeds": 8})
    problem = ToyProblem()
    state = run_rounds(algorithm, problem, rounds=3)
    [message] = algorithm.configure(state, 4, [0])
    assert len(message.scalars) == 8 and abs(sum(message.scalars) - 1) < 1e-6
    assert len(set(message.scalars)) > 1


def round_one(algorithm):
    state = algorithm.init({"w": torch.zeros(3)}, seed=0)
    [message] = algorithm.configure(state, 1, [0])
    return state, Sent(0, message, seed=0, examples=None, steps=None)


def test_malformed_reply_is_rejected():
    algorithm = build_algorithm("fedkseed", {"num_seeds": 8})
    state, sent = round_one(algorithm)
    bad = Message(kind="seeds", round=1, scalars=(1.0,) * 3, metrics={"num_examples": 1, "train_loss": 1.0})
    with pytest.raises(Rejected, match="3 scalars"):
        algorithm.accept(state, sent, bad)


@pytest.mark.parametrize("config", [
    {"used": [1], "abs_sums": [2001.0], "steps": [2]},  # more than clip·steps
    {"used": [1], "abs_sums": [-1.0], "steps": [1]},
    {"used": [1], "abs_sums": [1.0], "steps": [-1]},  # would make the history's length 0
    {"used": [9], "abs_sums": [1.0], "steps": [1]},  # not a candidate
])
def test_pro_statistics_no_client_could_have_are_rejected(config):
    algorithm = build_algorithm("fedkseed-pro", {"num_seeds": 4})
    state, sent = round_one(algorithm)
    reply = Message(kind="seeds", round=1, config=config, scalars=(0.0, 1.0, 0.0, 0.0),
                    metrics={"num_examples": 1, "train_loss": 1.0})
    with pytest.raises(Rejected, match="missing or impossible"):
        algorithm.accept(state, sent, reply)
    honest = {"used": [1], "abs_sums": [1.0], "steps": [1]}
    accepted = algorithm.accept(state, sent, Message(kind="seeds", round=1, config=honest, scalars=(0.0, 1.0, 0.0, 0.0),
                                                     metrics={"num_examples": 1, "train_loss": 1.0}))
    state = algorithm.aggregate(state, 1, [(0, accepted)])
    assert state.info["abs_sums"] == [0.0, 1.0, 0.0, 0.0] and state.info["steps"] == [0, 1, 0, 0]
