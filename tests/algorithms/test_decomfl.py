import pytest
import torch

from zofed.algorithms import build_algorithm
from zofed.runtime.codec import encode

from .toy import ToyProblem, run_rounds


@pytest.mark.parametrize("perturbations", [1, 3])
def test_lowers_the_global_loss(perturbations):
    problem = ToyProblem()
    algorithm = build_algorithm("decomfl", {"lr": 0.02, "mu": 1e-3, "perturbations": perturbations})
    state = run_rounds(algorithm, problem, rounds=15)
    assert problem.global_loss(state.weights) < 0.6 * problem.global_loss(problem.initial())


def test_clients_share_the_server_seeds_and_send_k_times_p_scalars():
    algorithm = build_algorithm("decomfl", {"perturbations": 2})
    problem = ToyProblem()
    state = algorithm.init(problem.initial(), seed=0)
    first, second = algorithm.configure(state, 1, [0, 1])
    assert first.config["base_seed"] == second.config["base_seed"]
    assert first.config["base_seed"] != algorithm.configure(state, 2, [0])[0].config["base_seed"]
    reply = algorithm.train(first, problem.env(0, seed=3, steps=5))
    assert len(reply.scalars) == 5 * 2 and not reply.tensors and not reply.seeds
    assert len(encode(reply)) < 10 * 4 + 400  # dimension-free: independent of the model size


def test_one_client_matches_its_own_update_on_the_server():
    algorithm = build_algorithm("decomfl", {"lr": 0.02, "mu": 1e-3})
    problem = ToyProblem(clients=1)
    state = algorithm.init(problem.initial(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    reply = algorithm.train(message, problem.env(0, seed=4))
    state = algorithm.aggregate(state, 1, [(0, reply)])
    assert torch.allclose(state.weights["weight"], problem.weight.data, atol=1e-6)


def test_lagging_client_replays_history_to_the_global_model():
    algorithm = build_algorithm("decomfl", {"lr": 0.02, "mu": 1e-3, "max_history": 3})
    problem = ToyProblem()
    state = run_rounds(algorithm, problem, rounds=2)
    weights_after_round_2 = {k: v.clone() for k, v in state.weights.items()}
    for round in (3, 4, 5):  # client 2 misses these rounds
        messages = algorithm.configure(state, round, [0, 1])
        replies = [(c, algorithm.train(m, problem.env(c, seed=round * 10 + c))) for c, m in zip([0, 1], messages)]
        state = algorithm.aggregate(state, round, replies)
    caught_up = algorithm.replay_history(state, weights_after_round_2, last_round=2)
    for name in state.weights:
        assert (caught_up[name] - state.weights[name]).abs().max().item() <= 1e-6
    assert algorithm.replay_history(state, problem.initial(), last_round=0) is None  # beyond max_history
