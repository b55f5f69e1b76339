"""A client refuses a round whose directions it would draw differently from the server's replay.

The server names its stream in every downlink of a method that replays directions, computed on
the device its state lives on; the client compares its own before training. Being in band, the
check holds in every runtime (a Flower node with another GPU, another CPU instruction set).
"""

from dataclasses import replace

import pytest
import torch

from zofed.algorithms import ALGORITHMS, build_algorithm
from zofed.algorithms.base import client_directions, state_on
from zofed.errors import ZofedError
from zofed.zo import make_directions

from .toy import ToyProblem, train_client

# No accelerator here: the meta device stands in for one (its gaussian stream is not the CPU's).
ACCELERATOR = torch.device("meta")
GAUSSIAN_CPU = make_directions("gaussian").stream_id("cpu")
# zorba plans over a transformer's layers, which the toy problem has none of: its configure is
# covered by tests/algorithms/test_zorba.py; its train draws z through the same client_directions.
TOY_ZO = {"fedmezo": {"upload": "seeds"}, "fedkseed": {}, "fedkseed-pro": {}, "decomfl": {}, "gamlpp": {},
          "fedspzo": {}, "fedzo": {"upload": "seeds"}}


def test_every_zo_method_is_listed_here():
    with_directions = {name for name, entry in ALGORITHMS.items() if "directions" in entry.settings.model_fields}
    assert with_directions == set(TOY_ZO) | {"zorba"}


@pytest.mark.parametrize("name", sorted(TOY_ZO))
def test_the_downlink_names_the_servers_stream_and_a_client_on_another_device_refuses_it(name):
    algorithm = build_algorithm(name, {"directions": "gaussian", **TOY_ZO[name]})
    message = algorithm.configure(algorithm.init(ToyProblem().initial(), seed=0), 1, [0])[0]
    assert message.config["stream"] == GAUSSIAN_CPU
    assert isinstance(client_directions(message.config, torch.device("cpu")), type(make_directions("gaussian")))
    with pytest.raises(ZofedError, match="draws directions from stream 'gaussian/meta.*use directions=pool"):
        client_directions(message.config, ACCELERATOR)


@pytest.mark.parametrize("name", sorted(TOY_ZO))
def test_pool_is_the_same_stream_on_every_device(name):
    algorithm = build_algorithm(name, {"directions": "pool", **TOY_ZO[name]})
    message = algorithm.configure(algorithm.init(ToyProblem().initial(), seed=0), 1, [0])[0]
    assert message.config["stream"] == make_directions("pool").stream_id(ACCELERATOR)
    client_directions(message.config, ACCELERATOR)


def test_a_server_on_the_accelerator_names_the_accelerators_stream():
    algorithm = build_algorithm("fedkseed", {"directions": "gaussian"})
    state = state_on(algorithm.init(ToyProblem().initial(), seed=0), ACCELERATOR)
    assert {tensor.device for tensor in [*state.weights.values(), *state.buffers.values()]} == {ACCELERATOR}
    config = algorithm.settings.client_config(state)
    assert config["stream"] == make_directions("gaussian").stream_id(ACCELERATOR) != GAUSSIAN_CPU
    client_directions(config, ACCELERATOR)
    with pytest.raises(ZofedError, match="this client on cpu"):
        client_directions(config, torch.device("cpu"))


def test_fedmezo_as_published_never_replays_so_any_stream_will_do():
    algorithm = build_algorithm("fedmezo", {"directions": "gaussian", "upload": "weights", "downlink": "weights"})
    message = algorithm.configure(algorithm.init(ToyProblem().initial(), seed=0), 1, [0])[0]
    assert "stream" not in message.config
    client_directions(message.config, ACCELERATOR)


def test_a_client_refuses_to_train_on_a_foreign_stream():
    problem = ToyProblem()
    algorithm = build_algorithm("fedmezo", {"directions": "gaussian", "upload": "seeds"})
    message = algorithm.configure(algorithm.init(problem.initial(), seed=0), 1, [0])[0]
    train_client(algorithm, problem, message, client=0, seed=1)  # its own stream: trains
    foreign = replace(message, config={**message.config, "stream": "gaussian/cuda/NVIDIA H200/torch-2.11.0"})
    with pytest.raises(ZofedError, match="NVIDIA H200"):
        train_client(algorithm, problem, foreign, client=0, seed=1)
