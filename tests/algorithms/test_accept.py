"""Each method's `accept`: an honest reply passes with the server's own values, a forged one is `Rejected`."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from zofed.algorithms import Rejected, Sent, build_algorithm
from zofed.messages import Message
from zofed.zo import mix_seed

from .toy import ToyPopulation, ToyProblem, train_client

STEPS = 4


def honest(name: str, settings: dict, client: int = 1):
    """(algorithm, state, sent, the client's honest reply) for round 1 of the toy problem."""
    algorithm, problem = build_algorithm(name, settings), ToyProblem()
    state = algorithm.init(problem.initial(), seed=0)
    population = ToyPopulation(problem, None, STEPS)
    [message] = algorithm.configure(state, 1, [client])
    reply = train_client(algorithm, problem, message, client, population.client_seed(1, client), steps=STEPS)
    sent = Sent(client, message, population.client_seed(1, client), population.examples(client), STEPS)
    return algorithm, state, sent, reply


def rejects(algorithm, state, sent, reply, reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        algorithm.accept(state, sent, reply)


SEEDS = ("fedmezo", {"lr": 0.02, "mu": 1e-3, "upload": "seeds"})


def test_fedmezo_seeds_honest_reply_passes_with_the_server_s_lr_and_count():
    algorithm, state, sent, reply = honest(*SEEDS)
    accepted = algorithm.accept(state, sent, reply)
    assert accepted.config["lr"] == 0.02 and accepted.metrics["num_examples"] == float(sent.examples)


@pytest.mark.parametrize("forge, reason", [
    (lambda r: replace(r, config={"lr": 1e6}), "lr"),
    (lambda r: replace(r, config={"lr": math.nan}), "lr"),
    (lambda r: replace(r, config={"lr": -0.02}), "lr"),
    (lambda r: replace(r, metrics={**r.metrics, "num_examples": 1e12}), "examples"),
    (lambda r: replace(r, seeds=(r.seeds[0],) * len(r.seeds)), "twice"),
    (lambda r: replace(r, seeds=tuple(reversed(r.seeds))), "twice or out of order"),
    (lambda r: replace(r, seeds=tuple(mix_seed(9, t) for t in range(len(r.seeds)))), "did not derive"),
    (lambda r: replace(r, seeds=r.seeds * 2, scalars=r.scalars * 2), "records for 4 local steps"),
    (lambda r: replace(r, round=0), "round 0 in round 1"),
    (lambda r: replace(r, kind="weights"), "where this method's clients send 'seeds'"),
])
def test_fedmezo_seeds_forgeries_are_rejected(forge, reason):
    algorithm, state, sent, reply = honest(*SEEDS)
    rejects(algorithm, state, sent, forge(reply), reason)


def test_a_missing_step_is_rejected_a_skipped_one_is_a_zero_record():
    algorithm, state, sent, reply = honest(*SEEDS)
    gapped = replace(reply, seeds=reply.seeds[1:], scalars=reply.scalars[1:])
    rejects(algorithm, state, sent, gapped, "3 records for 4 local steps")
    skipped = replace(reply, scalars=(0.0, *reply.scalars[1:]))
    assert algorithm.accept(state, sent, skipped).seeds == reply.seeds


def test_an_unknown_example_count_keeps_the_policy_s_value():
    algorithm, state, sent, reply = honest(*SEEDS)
    claimed = replace(reply, metrics={**reply.metrics, "num_examples": 1.0})
    assert algorithm.accept(state, replace(sent, examples=None), claimed).metrics["num_examples"] == 1.0


GAMLPP = ("gamlpp", {"lr": 0.02, "mu": 1e-3, "mix": 0.5})


@pytest.mark.parametrize("forge, reason", [
    (lambda r: replace(r, config={**r.config, "scales": r.config["scales"][:-1]}), "scales"),
    (lambda r: replace(r, config={**r.config, "scales": [math.nan, math.nan]}), "scales"),
    (lambda r: replace(r, config={**r.config, "scales": [10.0, 10.0]}), "scales"),
    (lambda r: replace(r, config={**r.config, "energy": [1.0] * 1000}), "energy"),
    (lambda r: replace(r, config={**r.config, "energy": [math.inf, 1.0]}), "energy"),
    (lambda r: replace(r, config={**r.config, "energy": [-1.0, 1.0]}), "energy"),
    (lambda r: replace(r, seeds=(r.seeds[0],) * len(r.seeds)), "twice"),
])
def test_gamlpp_scales_and_energy_are_the_server_s(forge, reason):
    algorithm, state, sent, reply = honest(*GAMLPP)
    assert algorithm.accept(state, sent, reply).config["scales"] == [1.0, 1.0]  # no energy yet: isotropic
    rejects(algorithm, state, sent, forge(reply), reason)


def test_decomfl_wrong_length_is_rejected_and_the_round_goes_on():
    algorithm, state, sent, reply = honest("decomfl", {"lr": 0.02, "mu": 1e-3, "perturbations": 2})
    assert len(algorithm.accept(state, sent, reply).scalars) == STEPS * 2
    rejects(algorithm, state, sent, replace(reply, scalars=reply.scalars[:-1]), "local steps × 2 perturbations")
    rejects(algorithm, state, sent, replace(reply, seeds=(1,) * len(reply.scalars)), "server issues them")


def test_fedkseed_wrong_length_and_too_many_moved_candidates_are_rejected():
    algorithm, state, sent, reply = honest("fedkseed", {"lr": 0.02, "mu": 1e-3, "num_seeds": 16})
    algorithm.accept(state, sent, reply)
    rejects(algorithm, state, sent, replace(reply, scalars=reply.scalars[:-1]), "15 scalars")
    rejects(algorithm, state, sent, replace(reply, scalars=(0.5,) * 16), "16 candidates moved in 4")


def test_fedkseed_pro_statistics_must_be_ones_the_client_s_steps_made():
    algorithm, state, sent, reply = honest("fedkseed-pro", {"lr": 0.02, "mu": 1e-3, "num_seeds": 16})
    algorithm.accept(state, sent, reply)
    stats = dict(reply.config)
    inflated = {**stats, "steps": [n * 100 for n in stats["steps"]], "abs_sums": [a * 100 for a in stats["abs_sums"]]}
    rejects(algorithm, state, sent, replace(reply, config=inflated), "count 400 steps in 4")
    twice = {key: [value[0], value[0]] for key, value in stats.items()}
    rejects(algorithm, state, sent, replace(reply, config=twice), "twice")
    rejects(algorithm, state, sent, replace(reply, config={}), "missing or impossible")
    beyond_clip = {**stats, "abs_sums": [1e9] * len(stats["abs_sums"])}
    rejects(algorithm, state, sent, replace(reply, config=beyond_clip), "missing or impossible")


def test_fedavg_forged_count_is_rejected():
    algorithm, state, sent, reply = honest("fedavg", {"lr": 0.01, "optimizer": "sgd"})
    algorithm.accept(state, sent, reply)
    rejects(algorithm, state, sent, replace(reply, metrics={**reply.metrics, "num_examples": 1e12}), "examples")


def test_zorba_layers_are_placed_by_the_server_s_names():
    profile = {"base_mb": 100.0, "block_mb": [10.0, 10.0], "block_params": [18, 3]}
    algorithm = build_algorithm("zorba", {"lr": 0.02, "memory_profile": profile, "num_clients": 1, "budgets_mb": [125]})
    weights = {"m.layers.0.w": torch.zeros(6, 3), "m.layers.1.b": torch.zeros(3)}
    state = algorithm.init(weights, seed=0)
    [message] = algorithm.configure(state, 1, [0])
    [layer] = message.config["active"]
    sent = Sent(0, message, seed=77, examples=10, steps=2)
    seeds = (mix_seed(77, 0), mix_seed(77, 1))
    metrics = {"num_examples": 10.0, "train_loss": 1.0, "forward_passes": 4.0, "skipped_steps": 0.0}
    reply = Message(kind="seeds", round=1, config={"lr": 0.02, "layers": {str(layer): [[layer, layer + 1]]}},
                    seeds=seeds, scalars=(0.1, 0.2), metrics=metrics)
    assert algorithm.accept(state, sent, reply).config["layers"] == {str(layer): [[layer, layer + 1]]}
    other = 1 - layer
    rejects(algorithm, state, sent, replace(reply, config={"lr": 0.02, "layers": {str(other): [[other, other + 1]]}}), "layers")
    rejects(algorithm, state, sent, replace(reply, config={"lr": 0.02, "layers": {str(layer): [[0, 2]]}}), "layers")
    rejects(algorithm, state, sent, replace(reply, config={"lr": 1.0, "layers": reply.config["layers"]}), "lr")
