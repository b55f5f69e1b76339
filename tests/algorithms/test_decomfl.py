from dataclasses import replace

import pytest
import torch

from zofed.algorithms import build_algorithm
from zofed.runtime.codec import encode

from .toy import ToyProblem, run_rounds, train_client


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
    reply = train_client(algorithm, problem, first, 0, 3, steps=5)
    assert len(reply.scalars) == 5 * 2 and not reply.tensors and not reply.seeds
    assert len(encode(reply)) < 10 * 4 + 400  # dimension-free: independent of the model size


def test_one_client_matches_its_own_update_on_the_server():
    algorithm = build_algorithm("decomfl", {"lr": 0.02, "mu": 1e-3})
    problem = ToyProblem(clients=1)
    state = algorithm.init(problem.initial(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    reply = train_client(algorithm, problem, message, 0, 4)
    state = algorithm.aggregate(state, 1, [(0, reply)])
    assert torch.allclose(state.weights["weight"], problem.weight.data, atol=1e-6)


def test_where_the_steps_are_unknown_a_shorter_reply_counts_as_skipped_steps_past_its_end():
    # `accept` holds every reply to the assigned steps (tests/algorithms/test_one_gate.py); without
    # them (sent.steps None) replies may differ in length, and aggregate still applies every one
    algorithm = build_algorithm("decomfl", {"lr": 0.02, "mu": 1e-3})
    problem = ToyProblem(clients=2)
    state = algorithm.init(problem.initial(), seed=0)
    messages = algorithm.configure(state, 1, [0, 1])
    replies = [(client, train_client(algorithm, problem, message, client, 4)) for client, message in enumerate(messages)]
    short = replace(replies[1][1], scalars=replies[1][1].scalars[:-1])
    padded = replace(short, scalars=short.scalars + (0.0,))
    assert torch.equal(algorithm.aggregate(state, 1, [replies[0], (1, short)]).weights["weight"],
                       algorithm.aggregate(state, 1, [replies[0], (1, padded)]).weights["weight"])
