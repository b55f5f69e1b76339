"""Replay downlink: clients that keep their model get records instead of weights, and agree exactly."""

import pytest
import torch

from zofed.algorithms import build_algorithm
from zofed.errors import ZofedError
from zofed.runtime.client import receive_model_
from zofed.runtime.codec import encode_with_sizes

from .toy import ToyProblem, kept_tensors, train_client

SEED_UPLOAD = {
    "fedmezo": {"lr": 0.02, "mu": 1e-3, "upload": "seeds"},
    "fedkseed": {"lr": 0.02, "mu": 1e-3, "num_seeds": 16},
    "fedkseed-pro": {"lr": 0.02, "mu": 1e-3, "num_seeds": 16},
    "decomfl": {"lr": 0.02, "mu": 1e-3, "perturbations": 2},
}
CLIENTS = 4


def sampled_in(round: int) -> list[int]:
    """Partial participation with gaps of 1 to 3 rounds, so clients replay several rounds at once."""
    return [c for c in range(CLIENTS) if (round + c) % 3 == 0 or (round * c) % 4 == 1]


def run(name: str, downlink: str, rounds: int, max_lag: int = 10, drop=()):
    """Rounds through codec and downlink; returns the server state, the messages' kinds and bytes, and a
    check that every client's kept model is bit-for-bit the global model of the version it holds."""
    algorithm = build_algorithm(name, {**SEED_UPLOAD[name], "downlink": downlink, "max_lag": max_lag})
    problem = ToyProblem(clients=CLIENTS)
    state = algorithm.init(problem.initial(), seed=0)
    versions = {0: {k: v.clone() for k, v in state.weights.items()}}
    kept, kinds, down_bytes, exact = {}, [], [], True
    for round in range(1, rounds + 1):
        sampled = sampled_in(round)
        replies = []
        for client, message in zip(sampled, algorithm.configure(state, round, sampled)):
            kinds.append((round, client, message.kind))
            down_bytes.append((round, message.kind, encode_with_sizes(message)[1].total))
            reply = train_client(algorithm, problem, message, client, 1000 * round + client, kept)
            held = kept[client]
            if held.version is not None:
                exact &= all(torch.equal(t, versions[held.version][n])
                             for n, t in zip(problem.names, kept_tensors(held, problem.env(client, 0).tensors)))
            if (round, client) not in drop:
                replies.append((client, reply))
        state = algorithm.aggregate(state, round, replies)
        versions[round] = {k: v.clone() for k, v in state.weights.items()}
    return state, kinds, down_bytes, exact


@pytest.mark.parametrize("name", sorted(SEED_UPLOAD))
def test_replay_gives_the_same_model_as_weights_bit_for_bit(name):
    by_weights, weight_kinds, _, _ = run(name, "weights", rounds=8)
    by_replay, replay_kinds, _, exact = run(name, "replay", rounds=8)
    assert exact  # every client's model after replay is the server's model at that version, exactly
    for key in by_weights.weights:
        assert torch.equal(by_weights.weights[key], by_replay.weights[key])
    assert {kind for *_, kind in weight_kinds} == {"weights"}
    assert {kind for *_, kind in replay_kinds} == {"weights", "replay"}
    first_contacts = {}
    for round, client, kind in replay_kinds:
        first_contacts.setdefault(client, kind)
    assert set(first_contacts.values()) == {"weights"}  # a client never seen has nothing to replay onto


def test_a_client_further_behind_than_max_lag_gets_weights():
    _, kinds, _, exact = run("fedmezo", "replay", rounds=10, max_lag=1)
    assert exact
    last_seen = {}
    for round, client, kind in kinds:
        if client in last_seen:
            gap = round - last_seen[client]
            assert kind == ("replay" if gap <= 1 else "weights"), (round, client, gap)
        last_seen[client] = round


def test_a_client_whose_reply_was_lost_skips_the_rounds_it_already_holds():
    drop = {(r, c) for r in range(1, 9) for c in sampled_in(r) if (r + c) % 2 == 0}
    by_weights, _, _, _ = run("decomfl", "weights", rounds=8, drop=drop)
    by_replay, _, _, exact = run("decomfl", "replay", rounds=8, drop=drop)
    assert exact
    for key in by_weights.weights:
        assert torch.equal(by_weights.weights[key], by_replay.weights[key])


def test_replay_downlink_bytes_do_not_grow_with_the_model():
    _, _, down_bytes, _ = run("fedmezo", "replay", rounds=6)
    replay_sizes = [size for _, kind, size in down_bytes if kind == "replay"]
    # two clients x 5 local steps per round: 12 bytes a record plus the JSON header
    assert replay_sizes and max(replay_sizes) < 1200


def test_replay_needs_a_seed_upload_and_a_kept_model():
    with pytest.raises(ValueError, match="upload: seeds"):
        build_algorithm("fedmezo", {"upload": "weights", "downlink": "replay"})
    algorithm = build_algorithm("fedmezo", {**SEED_UPLOAD["fedmezo"], "downlink": "replay"})
    problem = ToyProblem(clients=1)
    state = run_one_round(algorithm, problem)
    [message] = algorithm.configure(state, 2, [0])
    assert message.kind == "replay"
    env = problem.env(0, seed=1)
    with pytest.raises(ZofedError, match="holds no model"):
        receive_model_(message, env.tensors, env.names, None)


def run_one_round(algorithm, problem):
    state = algorithm.init(problem.initial(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    return algorithm.aggregate(state, 1, [(0, train_client(algorithm, problem, message, 0, 1))])
