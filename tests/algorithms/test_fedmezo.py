import math

import pytest
import torch

from zofed.algorithms import build_algorithm
from zofed.algorithms.fedmezo import heterogeneity_index, personalised_lrs, FedMeZOSettings
from zofed.messages import Message

from .toy import ToyProblem, run_rounds, train_client


def test_weights_and_seeds_upload_reach_the_same_global_weights():
    # One round: the server's replay differs from the client's in-place path by float rounding only.
    # Over several rounds that rounding changes the next round's loss differences (ZO divides by 2μ),
    # so the runs separate; both must still converge.
    by_weights = run_rounds(build_algorithm("fedmezo", {"lr": 0.02, "mu": 1e-3}), ToyProblem(), rounds=1)
    by_seeds = run_rounds(build_algorithm("fedmezo", {"lr": 0.02, "mu": 1e-3, "upload": "seeds"}), ToyProblem(), rounds=1)
    for name in by_weights.weights:
        assert (by_weights.weights[name] - by_seeds.weights[name]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("upload", ["weights", "seeds"])
def test_fedmezo_lowers_the_global_loss(upload):
    problem = ToyProblem()
    state = run_rounds(build_algorithm("fedmezo", {"lr": 0.02, "mu": 1e-3, "upload": upload}), problem, rounds=15)
    assert problem.global_loss(state.weights) < 0.6 * problem.global_loss(problem.initial())


def test_seed_reply_is_small_and_rebuilds_the_client_weights():
    algorithm = build_algorithm("fedmezo", {"lr": 0.02, "upload": "seeds"})
    problem = ToyProblem()
    state = algorithm.init(problem.initial(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    reply = train_client(algorithm, problem, message, 0, 5)
    assert reply.kind == "seeds" and not reply.tensors and len(reply.seeds) == 5
    rebuilt = algorithm.client_weights(state, reply)
    assert torch.allclose(rebuilt["weight"], problem.weight.data, atol=1e-6)


def test_heterogeneity_index():
    assert heterogeneity_index([1.0, 2.0, 3.0]) == [-1.0, 0.0, 1.0]
    assert heterogeneity_index([2.0, 2.0]) == [0.0, 0.0]
    assert heterogeneity_index([None, 1.0, 3.0]) == [0.0, -1.0, 1.0]
    assert heterogeneity_index([None, None]) == [0.0, 0.0]
    assert all(-1 <= phi <= 1 for phi in heterogeneity_index([0.1, 5.0, 2.0, 2.2]))


def info_with(history):
    return {"seed": 0, "history": {str(k): v for k, v in history.items()}}


def test_round_wise_raises_lr_of_higher_loss_clients():
    settings = FedMeZOSettings(lr=1.0, lr_strategy="round-wise", lr_alpha=0.5)
    info = info_with({0: {"losses": [1.0], "model_diff": None}, 1: {"losses": [3.0], "model_diff": None}})
    assert personalised_lrs(settings, info, 2, [0, 1, 2]) == [0.5, 1.5, 1.0]


@pytest.mark.parametrize("strategy, history", [
    ("round-wise", lambda loss: {"losses": [loss], "model_diff": None}),
    ("five-round", lambda loss: {"losses": [loss] * 5, "model_diff": None}),
])
def test_one_absurd_loss_claim_moves_only_its_own_lr(strategy, history):
    settings = FedMeZOSettings(lr=1.0, lr_strategy=strategy, lr_alpha=0.5)
    honest = {0: history(1.0), 1: history(2.0), 2: history(3.0)}
    for absurd in (1e12, 1e300, -1e12, 0.0):
        claimed = personalised_lrs(settings, info_with({**honest, 3: history(absurd)}), 9, [0, 1, 2, 3])
        # the median of the four claims is 2.5 (1.5 for a low claim): an absurd claim counts as the end of
        # [m/5, 5m] it lies beyond, a claim an honest client could make
        plausible = personalised_lrs(settings, info_with({**honest, 3: history(12.5 if absurd > 3 else 0.3)}),
                                     9, [0, 1, 2, 3])
        assert claimed == plausible and all(0.5 <= lr <= 1.5 for lr in claimed)
    # without the clip one claim of 1e12 would set every other rate to about η0·(1 − α/3)
    assert len({round(lr, 3) for lr in claimed[:3]}) == 3


def test_in_range_signals_follow_the_published_rule():
    settings = FedMeZOSettings(lr=1.0, lr_strategy="round-wise", lr_alpha=0.5)
    history = {c: {"losses": [loss], "model_diff": None} for c, loss in enumerate([1.0, 2.0, 4.0, 3.0])}
    mean, spread = 2.5, 1.5
    expected = [1.0 + 0.5 * (s - mean) / spread for s in (1.0, 2.0, 4.0, 3.0)]
    assert personalised_lrs(settings, info_with(history), 2, [0, 1, 2, 3]) == pytest.approx(expected)


def test_five_round_waits_for_five_rounds_of_history():
    settings = FedMeZOSettings(lr=1.0, lr_strategy="five-round")
    info = info_with({0: {"losses": [1.0] * 4, "model_diff": None}, 1: {"losses": [3.0] * 5, "model_diff": None}})
    assert personalised_lrs(settings, info, 6, [0, 1]) == [1.0, 1.0]  # only one client has a signal
    info = info_with({0: {"losses": [1.0] * 5, "model_diff": None}, 1: {"losses": [3.0] * 5, "model_diff": None}})
    assert personalised_lrs(settings, info, 6, [0, 1]) == [0.5, 1.5]


def test_random_strategy_is_seeded_and_in_range():
    settings = FedMeZOSettings(lr=1.0, lr_strategy="random", lr_alpha=0.5)
    first = personalised_lrs(settings, info_with({}), 3, [0, 1, 2, 3])
    assert first == personalised_lrs(settings, info_with({}), 3, [0, 1, 2, 3])
    assert first != personalised_lrs(settings, info_with({}), 4, [0, 1, 2, 3])
    assert all(0.5 <= lr <= 1.5 for lr in first)


def test_frozen_is_the_base_rate():
    assert personalised_lrs(FedMeZOSettings(lr=0.3), info_with({}), 1, [0, 5]) == [0.3, 0.3]


@pytest.mark.parametrize("strategy", ["round-wise", "five-round", "model-diff", "random"])
def test_strategies_with_partial_participation_and_many_clients(strategy):
    problem = ToyProblem(clients=7)
    algorithm = build_algorithm("fedmezo", {"lr": 0.02, "lr_strategy": strategy})
    state = algorithm.init(problem.initial(), seed=0)
    rates_seen = set()
    for round in range(1, 11):
        sampled = [c for c in range(7) if (c + round) % 3 != 0]
        messages = algorithm.configure(state, round, sampled)
        rates_seen.update(m.config["lr"] for m in messages)
        replies = [(c, train_client(algorithm, problem, m, c, round * 10 + c)) for c, m in zip(sampled, messages)]
        state = algorithm.aggregate(state, round, replies)
    assert len(rates_seen) > 1  # personalisation really varied the rates
    assert all(0.01 <= lr <= 0.03 for lr in rates_seen)
    assert all(math.isfinite(v) for v in (state.weights["weight"].sum().item(),))


def weights_reply(value: list[float], examples: int) -> Message:
    return Message(kind="weights", round=1, tensors={"w": torch.tensor(value)},
                   metrics={"num_examples": examples, "train_loss": 1.0})


@pytest.mark.parametrize("settings", [{}, {"weighting": "examples"},
                                      {"server_optimizer": {"name": "sgd", "lr": 0.5}}])
def test_model_diff_signal_is_distance_to_the_unweighted_mean_of_the_client_deltas(settings):
    """Official client.py: ‖Δ_i − mean Δ‖, whatever the weighting or server optimiser moved the model by."""
    algorithm = build_algorithm("fedmezo", {"lr": 1.0, "lr_strategy": "model-diff", **settings})
    state = algorithm.init({"w": torch.zeros(2)}, seed=0)
    replies = [(0, weights_reply([1.0, 0.0], 3)), (1, weights_reply([4.0, 0.0], 1)), (2, weights_reply([4.0, 0.0], 1))]
    state = algorithm.aggregate(state, 1, replies)
    # unweighted mean delta: [3, 0]; the examples-weighted one would be [2.2, 0]
    assert [state.info["history"][c]["model_diff"] for c in "012"] == pytest.approx([2.0, 1.0, 1.0])


def test_clients_count_equally_by_default_as_in_the_official_code():
    algorithm = build_algorithm("fedmezo")
    state = algorithm.init({"w": torch.zeros(1)}, seed=0)
    replies = [(0, weights_reply([1.0], 3)), (1, weights_reply([5.0], 1))]
    assert algorithm.aggregate(state, 1, replies).weights["w"].item() == pytest.approx(3.0)
    by_examples = build_algorithm("fedmezo", {"weighting": "examples"})
    assert by_examples.aggregate(state, 1, replies).weights["w"].item() == pytest.approx(2.0)


@pytest.mark.parametrize("weighting, expected", [("uniform", 3.0), ("examples", 2.0)])
def test_seeds_upload_weighs_clients_like_the_weights_upload(weighting, expected):
    """Two seed replies along the same seed with g = −1/lr and −5/lr rebuild weights 1·z and 5·z."""
    algorithm = build_algorithm("fedmezo", {"lr": 1.0, "upload": "seeds", "weighting": weighting})
    state = algorithm.init({"w": torch.zeros(4)}, seed=0)
    replies = [(c, Message(kind="seeds", round=1, config={"lr": 1.0}, seeds=(11,), scalars=(g,),
                           metrics={"num_examples": n, "train_loss": 1.0})) for c, g, n in ((0, -1.0, 3), (1, -5.0, 1))]
    single = [(0, Message(kind="seeds", round=1, config={"lr": 1.0}, seeds=(11,), scalars=(-expected,),
                          metrics={"num_examples": 1, "train_loss": 1.0}))]
    assert torch.allclose(algorithm.aggregate(state, 1, replies).weights["w"],
                          algorithm.aggregate(state, 1, single).weights["w"], atol=1e-6)


def test_published_defaults_and_the_reported_loss():
    settings = FedMeZOSettings()
    assert (settings.mu, settings.lr, settings.weighting, settings.step_loss) == (1e-3, 1e-5, "uniform", "plus")
    replies = {}
    for step_loss in ("plus", "mean"):
        algorithm = build_algorithm("fedmezo", {"lr": 0.02, "mu": 0.5, "upload": "seeds", "step_loss": step_loss})
        problem = ToyProblem()
        [message] = algorithm.configure(algorithm.init(problem.initial(), seed=0), 1, [0])
        replies[step_loss] = train_client(algorithm, problem, message, 0, 1, steps=1)
    plus, mean = replies["plus"], replies["mean"]
    assert plus.scalars == mean.scalars  # the report never changes g
    # L+ − (L+ + L−)/2 = (L+ − L−)/2 = μ·g: the default reports L+, the loss at θ + μz
    assert plus.metrics["train_loss"] - mean.metrics["train_loss"] == pytest.approx(0.5 * plus.scalars[0], rel=1e-5)
