import pytest
import torch

from zofed.algorithms import build_algorithm
from zofed.algorithms.fedkseed import candidate_seeds, seed_probabilities
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
    probabilities = seed_probabilities([0.0, 1.0, 4.0], temperature=0.5)
    assert probabilities[2] > probabilities[1] > probabilities[0] and sum(probabilities) == pytest.approx(1.0)
    assert seed_probabilities([0.0, 0.0], 0.5) == [0.5, 0.5]


def test_pro_probabilities_travel_and_are_used():
    algorithm = build_algorithm("fedkseed-pro", {"num_seeds": 8})
    problem = ToyProblem()
    state = run_rounds(algorithm, problem, rounds=3)
    [message] = algorithm.configure(state, 4, [0])
    assert len(message.scalars) == 8 and abs(sum(message.scalars) - 1) < 1e-6
    assert len(set(message.scalars)) > 1


def test_malformed_reply_is_not_applied():
    algorithm = build_algorithm("fedkseed", {"num_seeds": 8})
    state = algorithm.init({"w": torch.zeros(3)}, seed=0)
    bad = Message(kind="seeds", round=1, scalars=(1.0,) * 3, metrics={"num_examples": 1, "train_loss": 1.0})
    after = algorithm.aggregate(state, 1, [(0, bad)])
    assert torch.equal(after.weights["w"], state.weights["w"]) and after.info == state.info
