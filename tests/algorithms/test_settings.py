"""The ZO settings base: shared fields with each method's published defaults, the sampler built once,
`replays_directions` declared by every method, the estimator reaching every ZO method's clients."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from zofed.algorithms import ALGORITHMS, METHODS, ZOSettings, build_algorithm

from .test_accept import STEPS
from .toy import ToyProblem, train_client

ZO = sorted(name for name, entry in ALGORITHMS.items() if issubclass(entry.settings, ZOSettings))
PROFILE = {"base_mb": 100.0, "block_mb": [10.0, 10.0], "block_params": [18, 3]}
REQUIRED = {"zorba": {"memory_profile": PROFILE, "num_clients": 1, "budgets_mb": [125]}}


def test_every_method_is_registered_once_from_the_one_tuple():
    assert sorted(entry.name for entry in METHODS) == sorted(ALGORITHMS)
    assert ZO == ["decomfl", "fedkseed", "fedkseed-pro", "fedmezo", "fedspzo", "fedzo", "gamlpp", "zorba"]


@pytest.mark.parametrize("name", ZO)
def test_every_zo_method_declares_whether_others_replay_its_directions(name):
    settings_class = ALGORITHMS[name].settings
    declared = [cls for cls in settings_class.__mro__ if "replays_directions" in vars(cls)]
    assert declared[0] not in (ZOSettings,), f"{name} inherits replays_directions instead of declaring it"
    assert isinstance(settings_class(**REQUIRED.get(name, {})).replays_directions, bool)


def test_published_defaults_override_the_base_and_nothing_else():
    defaults = {name: ALGORITHMS[name].settings(**REQUIRED.get(name, {})) for name in ZO}
    assert (defaults["fedmezo"].lr, defaults["fedmezo"].mu, defaults["fedmezo"].weighting) == (1e-5, 1e-3, "uniform")
    assert (defaults["decomfl"].weighting, defaults["decomfl"].downlink) == ("uniform", "replay")
    # the official code's: FederatedScope FedKSeed's zo_eps and its README scripts' lr; DeComFL's CLI defaults
    assert (defaults["fedkseed"].lr, defaults["fedkseed"].mu, defaults["fedkseed"].num_seeds) == (3e-7, 5e-4, 4096)
    assert (defaults["fedkseed-pro"].lr, defaults["fedkseed-pro"].mu) == (3e-7, 5e-4)
    assert (defaults["decomfl"].lr, defaults["decomfl"].mu, defaults["decomfl"].perturbations) == (1e-4, 1e-3, 1)
    assert defaults["zorba"].mu == 1e-3
    # FedZO's one-sided estimate and plain average over the sampled clients (Fang et al.)
    assert (defaults["fedzo"].estimator, defaults["fedzo"].weighting) == ("forward", "uniform")
    for name, settings in defaults.items():
        assert (settings.directions, settings.step_loss) == ("gaussian", "plus")
        assert settings.estimator == ("forward" if name == "fedzo" else "central"), name


@pytest.mark.parametrize("name", ZO)
@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_lr_and_mu_must_be_positive_and_finite(name, value):
    for field in ("lr", "mu"):
        with pytest.raises(ValidationError):
            ALGORITHMS[name].settings(**REQUIRED.get(name, {}), **{field: value})


def test_the_sampler_is_built_once_and_settings_stay_comparable():
    first = build_algorithm("fedkseed", {"directions": "pool", "pool_size": 4096}).settings
    second = build_algorithm("fedkseed", {"directions": "pool", "pool_size": 4096}).settings
    assert first.sampler is first.sampler is second.sampler
    assert first == second and first.model_dump() == second.model_dump()


ESTIMATOR_CASES = [
    ("fedmezo", {"upload": "seeds"}, {"central": 2, "forward": 2}),
    ("fedkseed", {"num_seeds": 16}, {"central": 2, "forward": 2}),
    ("fedkseed-pro", {"num_seeds": 16}, {"central": 2, "forward": 2}),
    ("decomfl", {"perturbations": 3}, {"central": 6, "forward": 4}),
    ("gamlpp", {}, {"central": 2, "forward": 2}),
    ("fedzo", {"directions_per_step": 4, "upload": "seeds"}, {"central": 8, "forward": 5}),
]
ESTIMATOR_ELSEWHERE = {"fedspzo", "zorba"}  # test_fedspzo.py (a split model), test_zorba.py (a plan of layers)


def test_every_zo_method_has_its_estimator_and_forward_count_tested():
    assert {name for name, _, _ in ESTIMATOR_CASES} | ESTIMATOR_ELSEWHERE == set(ZO)


@pytest.mark.parametrize("name, extra, per_step", ESTIMATOR_CASES)
def test_the_estimator_reaches_the_client_and_its_forwards_are_counted(name, extra, per_step):
    rows = {}
    for estimator in ("central", "forward"):
        algorithm, problem = build_algorithm(name, {"lr": 0.02, "mu": 1e-3, "estimator": estimator, **extra}), ToyProblem()
        state = algorithm.init(problem.initial(), seed=0)
        [message] = algorithm.configure(state, 1, [0])
        assert message.config["estimator"] == estimator
        calls = []
        loss = problem.env(0, 5).loss
        problem.env = wrap_env(problem.env, loss, calls)
        reply = train_client(algorithm, problem, message, 0, 5, steps=STEPS)
        assert reply.metrics["forward_passes"] == len(calls) == STEPS * per_step[estimator]
        rows[estimator] = reply.scalars
    assert rows["central"] != rows["forward"]  # a different estimate, not the same one relabelled


def wrap_env(make_env, loss, calls):
    import dataclasses

    def counted_loss(batch):
        calls.append(1)
        return loss(batch)

    return lambda *args, **kwargs: dataclasses.replace(make_env(*args, **kwargs), loss=counted_loss)
