"""ZorBA: block-wise aggregation, active blocks only, plans within budgets, coverage rotation."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import pytest
import torch

from zofed.algorithms import build_algorithm
from zofed.algorithms.zorba import client_budgets, current_plan, plan
from zofed.errors import ZofedError
from zofed.messages import Message

from .toy import ToyProblem, kept_tensors

PROFILE = {"base_mb": 100.0, "block_mb": [10.0, 10.0], "block_params": [18, 3]}
SETTINGS = {"lr": 0.02, "mu": 1e-3, "memory_profile": PROFILE, "num_clients": 3, "budgets_mb": [125, 125, 125]}


class TwoLayerToy:
    """The toy's weight is layer 0 and its bias layer 1; `lowered` records what it was asked to lower."""

    num_layers = 2
    tensor_layers = (0, 1)

    def __init__(self) -> None:
        self.lowered_calls: list[tuple[list[int], torch.dtype]] = []

    @contextmanager
    def lowered(self, layers, dtype, keep_master=True):
        self.lowered_calls.append((list(layers), dtype))
        yield


def with_plan(algorithm, problem, active):
    state = algorithm.init(problem.initial(), seed=0)
    return dataclasses.replace(state, info={**state.info, "plans": [{**current_plan(state.info), "active": active}]})


def train(algorithm, problem, state, client, model=None):
    model = model or TwoLayerToy()
    [message] = algorithm.configure(state, 1, [client])
    problem.weight.data.copy_(state.weights["weight"])
    problem.bias.data.copy_(state.weights["bias"])
    env = dataclasses.replace(problem.env(client, seed=100 + client), split=model)
    reply = algorithm.train(message, env)
    return reply, {"weight": problem.weight.data.clone(), "bias": problem.bias.data.clone()}


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
def test_each_block_is_averaged_over_the_clients_that_trained_it(weighting):
    problem, algorithm = ToyProblem(), build_algorithm("zorba", {**SETTINGS, "weighting": weighting})
    state = with_plan(algorithm, problem, [[0], [0, 1], [1]])
    replies, finals = [], {}
    for client in range(3):
        reply, finals[client] = train(algorithm, problem, state, client)
        replies.append((client, reply))
    new = algorithm.aggregate(state, 1, replies)
    examples = {client: float(reply.metrics["num_examples"]) if weighting == "examples" else 1.0
                for client, reply in replies}
    assert len(set(examples.values())) == (3 if weighting == "examples" else 1)  # the toy's clients differ in size
    # Manual: each block moves by the weighted mean of the local updates of its trainers.
    for name, trainers in (("weight", (0, 1)), ("bias", (1, 2))):
        total = sum(examples[c] for c in trainers)
        expected = state.weights[name] + sum(examples[c] / total * (finals[c][name] - state.weights[name]) for c in trainers)
        torch.testing.assert_close(new.weights[name], expected, atol=1e-6, rtol=1e-5)
    assert new.info["last_trained"] == [1, 1]


def test_a_client_trains_only_its_active_blocks_with_the_rest_lowered():
    problem, algorithm = ToyProblem(), build_algorithm("zorba", SETTINGS)
    state = with_plan(algorithm, problem, [[1], [0, 1], [1]])
    model = TwoLayerToy()
    reply, final = train(algorithm, problem, state, 0, model)
    assert torch.equal(final["weight"], state.weights["weight"])  # layer 0 inactive: untouched
    assert not torch.equal(final["bias"], state.weights["bias"])
    assert model.lowered_calls == [([0], torch.bfloat16)]
    assert reply.config["layers"] == {"1": [[1, 2]]} and reply.metrics["active_blocks"] == 1.0


def test_the_estimator_reaches_the_client_and_its_forwards_are_counted():
    scalars = {}
    for estimator in ("central", "forward"):
        problem, algorithm = ToyProblem(), build_algorithm("zorba", {**SETTINGS, "estimator": estimator})
        state = with_plan(algorithm, problem, [[0, 1], [0, 1], [0, 1]])
        calls, make_env = [], problem.env

        def counted_env(*args, **kwargs):
            env = make_env(*args, **kwargs)
            return dataclasses.replace(env, loss=lambda batch, loss=env.loss: calls.append(1) or loss(batch))

        problem.env = counted_env
        reply, _ = train(algorithm, problem, state, 0)
        # one direction a step: 2 forwards either way (forward: L(θ) and L(θ+μz))
        assert reply.metrics["forward_passes"] == len(calls) == 2 * reply.metrics["steps"] > 0
        scalars[estimator] = reply.scalars
    assert scalars["central"] != scalars["forward"]  # another estimate, not the same one relabelled


def test_plans_fit_every_budget_and_cost_less_memory_than_training_everything():
    profile = {"base_mb": 400.0, "block_mb": [6.0] * 8, "block_params": [1000] * 8}
    settings = build_algorithm("zorba", {"memory_profile": profile, "num_clients": 6,
                                         "device_profile": "mixed"}).settings
    budgets = client_budgets(settings, settings.memory_profile, 6)
    assert budgets[0] < budgets[1] < budgets[2] == budgets[5]  # mixed: phone, laptop, workstation, cycled
    decided = plan(settings)
    assert all(v <= b + 1e-6 for v, b in zip(decided["predicted_mb"], decided["budgets_mb"]))
    assert decided["uncovered"] == [] and all(decided["active"])
    assert sum(decided["predicted_mb"]) < 6 * (400 + 8 * 6)


def test_re_solving_rotates_blocks_that_tight_budgets_leave_untrained():
    profile = {"base_mb": 100.0, "block_mb": [10.0] * 4, "block_params": [50] * 4}
    algorithm = build_algorithm("zorba", {"lr": 0.02, "memory_profile": profile, "num_clients": 2,
                                          "budgets_mb": [115, 115], "resolve_every": 1})
    weights = {f"t{i}": torch.zeros(3) for i in range(4)}
    state = algorithm.init(weights, seed=0)
    covered = set()
    for round in range(1, 5):
        active = current_plan(state.info)["active"]
        covered |= {layer for row in active for layer in row}
        replies = [(client, Message(kind="seeds", round=round, config={"lr": 0.02, "layers": {str(row[0]): [[row[0], row[0] + 1]]}},
                                    seeds=(1,), scalars=(0.5,), metrics={"num_examples": 4.0}))
                   for client, row in enumerate(active)]
        state = algorithm.aggregate(state, round, replies)
    assert covered == {0, 1, 2, 3}
    assert len(state.info["plans"]) == 5


def test_bad_budgets_are_one_line_errors(tmp_path):
    from ..runtime.helpers import tiny_config

    with pytest.raises(ZofedError, match="one budget per client"):
        tiny_config(tmp_path, "zorba", "zorba.budgets_mb=[900]")
    with pytest.raises(ZofedError, match="device_profile"):
        tiny_config(tmp_path, "zorba", "zorba.device_profile=toaster")
    algorithm = build_algorithm("zorba", {"memory_profile": PROFILE, "num_clients": 1, "budgets_mb": [105]})
    with pytest.raises(ZofedError, match="cannot hold even one block"):
        algorithm.init({"a": torch.zeros(1)}, seed=0)


def run_rounds_through_the_wire(algorithm, rounds: int):
    """Partial participation through codec and downlink; returns the state, the message kinds and whether
    every client's kept model is bit-for-bit the server's model of the version it holds."""
    from zofed.runtime.client import KeptInMemory, receive_model_
    from zofed.runtime.codec import decode, encode

    problem = ToyProblem()
    state = with_plan(algorithm, problem, [[0], [0, 1], [1]])
    versions = {0: {name: tensor.clone() for name, tensor in state.weights.items()}}
    kept, kinds, exact = {}, [], True
    for round in range(1, rounds + 1):
        sampled = [c for c in range(3) if c == 1 or (round + c) % 3 == 0]
        replies = []
        for client, message in zip(sampled, algorithm.configure(state, round, sampled)):
            kinds.append((round, client, message))
            env = dataclasses.replace(problem.env(client, seed=100 * round + client), split=TwoLayerToy())
            held = kept.setdefault(client, KeptInMemory())
            received = receive_model_(decode(encode(message)), env.tensors, env.names, held)
            if held.version is not None:
                exact &= all(torch.equal(t, versions[held.version][n])
                             for n, t in zip(problem.names, kept_tensors(held, env.tensors)))
            replies.append((client, decode(encode(algorithm.train(received, env)))))
        state = algorithm.aggregate(state, round, replies)
        versions[round] = {name: tensor.clone() for name, tensor in state.weights.items()}
    return state, kinds, exact


def test_block_records_are_the_default_downlink_and_replay_exactly():
    algorithm = build_algorithm("zorba", SETTINGS)
    assert algorithm.settings.downlink == "replay"
    state, messages, exact = run_rounds_through_the_wire(algorithm, rounds=6)
    assert exact  # block records replayed on each layer's tensors only give the server's model bit for bit
    first = {}
    for round, client, message in messages:
        first.setdefault(client, message.kind)
    assert set(first.values()) == {"weights"}  # first contact: nothing to replay onto
    replays = [message for _, _, message in messages if message.kind == "replay"]
    assert replays and all(not message.tensors for message in replays)
    tables = replays[-1].config["replay"]["blocks"]
    assert all(table["blocks"] for table in tables if table is not None)
    # block rows name layer 0 (the weight, view index 0) or layer 1 (the bias, view index 1)
    assert {tuple(map(tuple, ranges)) for table in tables for ranges in table["blocks"]} <= {((0, 1),), ((1, 2),)}
    assert not torch.equal(state.weights["weight"], ToyProblem().initial()["weight"])


@pytest.mark.parametrize("downlink", ["weights", "replay"])
def test_weights_travel_with_inactive_layers_low_on_every_downlink(downlink):
    """The memory budget holds on a replay downlink's first contact too."""
    weights = {"model.layers.0.w": torch.zeros(2), "model.layers.1.w": torch.zeros(2), "model.norm.w": torch.zeros(2)}
    algorithm = build_algorithm("zorba", {**SETTINGS, "downlink": downlink})
    state = algorithm.init(weights, seed=0)
    state = dataclasses.replace(state, info={**state.info, "plans": [{**current_plan(state.info), "active": [[0], [0, 1], [1]]}]})
    [message] = algorithm.configure(state, 1, [2])
    assert message.kind == "weights" and message.config["keep_model"] == (downlink == "replay")
    dtypes = {name: tensor.dtype for name, tensor in message.tensors.items()}
    assert dtypes == {"model.layers.0.w": torch.bfloat16, "model.layers.1.w": torch.float32,
                      "model.norm.w": torch.float32}


class FourLayerSplit:
    """What a preparation sees of a 4-layer model: one trainable tensor per layer, named as transformers names it."""

    num_layers = 4
    tensor_layers = (0, 1, 2, 3)

    def __init__(self, trainable_layers=(0, 1, 2, 3)) -> None:
        self.layer_modules = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(4))
        self.weights = {f"model.layers.{layer}.lora_A.weight": torch.ones(4 if layer in trainable_layers else 0, 8)
                        for layer in range(4)}

    def lowered(self, layers, dtype, keep_master=True):
        raise AssertionError("a preparation's probes are run by the runtime, not by the method")


def prepare_env(split=None):
    from zofed.algorithms.base import PrepareEnv

    split = split or FourLayerSplit()
    return PrepareEnv(weights=split.weights, split=split, batch_size=2)


def test_the_memory_profile_is_declared_on_the_registry_entry():
    from zofed.algorithms import ALGORITHMS, get_algorithm

    from zofed.algorithms.settings import LR_PROBE

    # every ZO method's entry starts with the shared lr range test; the memory profile is ZorBA's own
    lr_probe, step = get_algorithm("zorba").prepare
    assert lr_probe is LR_PROBE and step.fills == "memory_profile"
    assert step.needed(build_algorithm("zorba", {"num_clients": 3}).settings)
    assert not step.needed(build_algorithm("zorba", SETTINGS).settings)
    assert all(step not in entry.prepare for name, entry in ALGORITHMS.items() if name != "zorba")


def test_profile_probes_are_the_downlinks_configure_sends():
    """Built by ZorBA's own configure: a round-1 downlink of an ordinary run whose plan gives client 0
    the first k layers is the same message, config keys and low-precision tensors included."""
    from zofed.algorithms.zorba import profile_probes

    model = prepare_env()
    settings = build_algorithm("zorba", {**SETTINGS, "memory_profile": None, "lr": 0.03}).settings
    probes = list(profile_probes(settings, model))
    assert [probe.message.config["active"] for probe in probes] == [[0], [0, 1], [0, 1, 2, 3]]
    ordinary = build_algorithm("zorba", {**SETTINGS, "lr": 0.03, "num_clients": 1, "budgets_mb": [200]})
    for probe in probes:
        active = probe.message.config["active"]
        assert probe.lowered == tuple(range(len(active), 4)) and probe.dtype == torch.bfloat16
        state = ordinary.init(model.weights, seed=0)
        state = dataclasses.replace(state, info={**state.info, "plans": [{**current_plan(state.info), "active": [active]}]})
        [expected] = ordinary.configure(state, 1, [0])
        assert probe.message.kind == expected.kind == "weights" and probe.message.config == expected.config
        assert {name: t.dtype for name, t in probe.message.tensors.items()} == {
            name: t.dtype for name, t in expected.tensors.items()}
        assert {name for name, t in probe.message.tensors.items() if t.dtype == torch.bfloat16} == {
            f"model.layers.{layer}.lora_A.weight" for layer in range(len(active), 4)}


def test_the_fitted_profile_never_under_predicts_a_measured_point():
    from zofed.algorithms.base import ProbeResult
    from zofed.algorithms.zorba import fit_profile

    model = prepare_env()
    settings = build_algorithm("zorba", {**SETTINGS, "memory_profile": None}).settings
    peaks = {1: 500.0, 2: 520.0, 4: 560.0}
    results = [ProbeResult({"active": list(range(k))}, Message(kind="seeds", round=1), {"peak_rss_mb": peak})
               for k, peak in peaks.items()]
    profile = fit_profile(settings, model, results)
    assert profile.block_params == [32] * 4 and profile.source == "measured (bf16 inactive layers, batch 2)"
    assert [point["active_blocks"] for point in profile.points] == [1.0, 2.0, 4.0]
    for k, peak in peaks.items():
        assert profile.base_mb + sum(profile.block_mb[:k]) >= peak
    # on a line of 20 MB a layer over layers of equal bytes: each layer 20 MB, base what is left
    assert profile.block_mb == pytest.approx([20.0] * 4, abs=1e-3) and 480.0 <= profile.base_mb <= 480.1


def test_a_layer_without_trainable_tensors_cannot_be_profiled():
    from zofed.algorithms.zorba import profile_probes

    settings = build_algorithm("zorba", {**SETTINGS, "memory_profile": None}).settings
    with pytest.raises(ZofedError, match="every layer needs trainable tensors"):
        next(profile_probes(settings, prepare_env(FourLayerSplit(trainable_layers=(0, 1)))))
