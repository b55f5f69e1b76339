"""One gate: `accept` is the only judge of a reply, `aggregate` applies every reply it is given.

Each case is a reply some method's `aggregate` used to drop on its own (after the round had
counted it as accepted): `accept` now rejects it, and the round's screening counts it rejected.
A seed reply carries a record for every local step the server assigned, a skipped one with g = 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace

import pytest
import torch

from zofed.algorithms import Rejected, Sent, build_algorithm
from zofed.algorithms.fedspzo import BLOCK_1, BLOCK_2, step_seed
from zofed.config import RobustConfig
from zofed.messages import Message
from zofed.runtime.screening import screen
from zofed.zo import mix_seed

from .test_accept import STEPS, honest
from .toy import ToyProblem

METRICS = {"num_examples": 10.0, "train_loss": 1.0, "forward_passes": 4.0, "skipped_steps": 0.0}


def zorba_case():
    profile = {"base_mb": 100.0, "block_mb": [10.0, 10.0], "block_params": [18, 3]}
    algorithm = build_algorithm("zorba", {"lr": 0.02, "memory_profile": profile, "num_clients": 1, "budgets_mb": [125]})
    state = algorithm.init({"m.layers.0.w": torch.zeros(6, 3), "m.layers.1.b": torch.zeros(3)}, seed=0)
    [message] = algorithm.configure(state, 1, [0])
    [layer] = message.config["active"]
    sent = Sent(0, message, seed=77, examples=10, steps=2)
    reply = Message(kind="seeds", round=1, config={"lr": 0.02, "layers": {str(layer): [[layer, layer + 1]]}},
                    seeds=(mix_seed(77, 0), mix_seed(77, 1)), scalars=(0.1, 0.2), metrics=METRICS)
    return algorithm, state, sent, reply


def fedspzo_case():
    algorithm = build_algorithm("fedspzo", {"lr": 0.02, "mu": 1e-3, "p1": 1, "p2": 2})
    state = algorithm.init(ToyProblem().initial(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    sent = Sent(0, message, seed=77, examples=10, steps=2)
    seeds = tuple(step_seed(77, step, block, p) for step in range(2) for block, count in ((BLOCK_2, 2), (BLOCK_1, 1))
                  for p in range(count))
    reply = Message(kind="seeds", round=1, config={"blocks": {"1": [[0, 1]], "2": [[1, 2]]}}, seeds=seeds,
                    scalars=(0.1,) * len(seeds), metrics=METRICS)
    return algorithm, state, sent, reply


def toy_case(name, settings):
    return lambda: honest(name, settings)


CASES = {
    "zorba": zorba_case,
    "fedspzo": fedspzo_case,
    "fedkseed": toy_case("fedkseed", {"lr": 0.02, "mu": 1e-3, "num_seeds": 16}),
    "decomfl": toy_case("decomfl", {"lr": 0.02, "mu": 1e-3, "perturbations": 2}),
    "gamlpp": toy_case("gamlpp", {"lr": 0.02, "mu": 1e-3, "mix": 0.5}),
    "fedmezo": toy_case("fedmezo", {"lr": 0.02, "mu": 1e-3, "upload": "seeds"}),
}

# (method, what the old aggregate dropped, the forgery, the reason accept gives)
DROPPED_BY_AGGREGATE = [
    ("zorba", "layers not a mapping", lambda r: replace(r, config={"lr": 0.02, "layers": [[0, 1]]}), "layers"),
    ("zorba", "layers not assigned", lambda r: replace(r, config={"lr": 0.02, "layers": {"5": [[0, 1]]}}), "layers"),
    ("zorba", "overlapping layers", lambda r: replace(r, config={"lr": 0.02, "layers": {"0": [[0, 2]]}}), "layers"),
    ("zorba", "lr not a number", lambda r: replace(r, config={**r.config, "lr": "fast"}), "lr"),
    ("zorba", "fewer scalars than seeds", lambda r: replace(r, scalars=r.scalars[:1]), "seeds for 1 scalars"),
    ("fedspzo", "blocks not a mapping", lambda r: replace(r, config={"blocks": [[0, 2]]}), "blocks"),
    ("fedspzo", "no blocks", lambda r: replace(r, config={}), "blocks"),
    ("fedspzo", "overlapping blocks", lambda r: replace(r, config={"blocks": {"1": [[0, 2]], "2": [[1, 2]]}}), "blocks"),
    ("fedspzo", "blocks beyond the view", lambda r: replace(r, config={"blocks": {"1": [[0, 1]], "2": [[1, 9]]}}),
     "blocks"),
    ("fedspzo", "blocks of the wrong type", lambda r: replace(r, config={"blocks": {"1": "all", "2": [[1, 2]]}}),
     "blocks"),
    ("fedspzo", "records not whole steps", lambda r: replace(r, seeds=r.seeds[:-1], scalars=r.scalars[:-1]),
     "whole steps"),
    ("fedspzo", "fewer scalars than seeds", lambda r: replace(r, scalars=r.scalars[:-1]), "seeds for 5 scalars"),
    ("fedkseed", "not K scalars", lambda r: replace(r, scalars=r.scalars[:-1]), "15 scalars"),
    ("decomfl", "another length than the round's", lambda r: replace(r, scalars=r.scalars + (1e3, 1e3)),
     "local steps × 2 perturbations"),
    ("gamlpp", "scales of another length", lambda r: replace(r, config={**r.config, "scales": [1.0]}), "scales"),
]


@pytest.mark.parametrize("method, dropped, forge, reason", DROPPED_BY_AGGREGATE,
                         ids=[f"{method}: {dropped}" for method, dropped, _, _ in DROPPED_BY_AGGREGATE])
def test_accept_rejects_what_aggregate_used_to_drop_and_the_round_counts_it(method, dropped, forge, reason):
    algorithm, state, sent, reply = CASES[method]()
    algorithm.accept(state, sent, reply)  # the honest reply passes
    forged = forge(reply)
    with pytest.raises(Rejected, match=reason):
        algorithm.accept(state, sent, forged)
    screened = screen([(sent.client, forged)], {sent.client: sent}, state, algorithm, RobustConfig())
    assert screened.replies == [] and list(screened.rejected) == [sent.client]


@pytest.mark.parametrize("method", ["fedmezo", "gamlpp", "decomfl", "zorba", "fedspzo"])
def test_a_reply_carrying_only_its_last_step_s_records_is_rejected(method):
    algorithm, state, sent, reply = CASES[method]()
    width = len(reply.scalars) // sent.steps
    last = replace(reply, seeds=reply.seeds[-width:], scalars=tuple(100 * g for g in reply.scalars[-width:]))
    with pytest.raises(Rejected, match=f"for {sent.steps} local steps"):
        algorithm.accept(state, sent, last)
    assert list(screen([(sent.client, last)], {sent.client: sent}, state, algorithm, RobustConfig()).rejected) == [
        sent.client]


def nan_at_step(env, step: int, calls_per_step: int = 2):
    """The env with its loss NaN throughout local step `step` (the central estimator's two forwards a step)."""
    calls = []

    def loss(batch):
        calls.append(1)
        return math.nan if (len(calls) - 1) // calls_per_step == step else env.loss(batch)

    return dataclasses.replace(env, loss=loss)


@pytest.mark.parametrize("name, settings", [
    ("fedmezo", {"lr": 0.02, "mu": 1e-3, "upload": "seeds"}),
    ("gamlpp", {"lr": 0.02, "mu": 1e-3, "mix": 0.5}),
    ("decomfl", {"lr": 0.02, "mu": 1e-3, "perturbations": 1}),
])
def test_a_skipped_step_is_a_zero_record_the_server_accepts_and_that_moves_nothing(name, settings):
    algorithm, problem = build_algorithm(name, settings), ToyProblem()
    state = algorithm.init(problem.initial(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    reply = algorithm.train(message, nan_at_step(problem.env(0, seed=5, steps=STEPS), step=1))
    assert len(reply.scalars) == STEPS and reply.scalars[1] == 0.0 and all(reply.scalars[i] for i in (0, 2, 3))
    assert reply.metrics["skipped_steps"] == 1.0
    sent = Sent(0, message, 5, len(problem.inputs[0]), STEPS)
    accepted = algorithm.accept(state, sent, reply)
    # the server rebuilds exactly the client's model: the zero record moved nothing on either side
    new = algorithm.aggregate(state, 1, [(0, accepted)])
    if name != "gamlpp":  # gamlpp's server applies adaptive momentum, not the client's update
        assert torch.allclose(new.weights["weight"], problem.weight.data, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["fedmezo", "gamlpp", "zorba", "fedspzo", "fedkseed", "decomfl"])
def test_aggregate_of_no_reply_keeps_the_weights(name):
    algorithm, state, _, _ = CASES[name]()
    new = algorithm.aggregate(state, 1, [])
    assert all(torch.equal(new.weights[key], state.weights[key]) for key in state.weights)
