"""A client on an accelerator must draw the z the host-side server rebuilds, or the run is refused."""

import pytest
import torch

from zofed.algorithms import get_algorithm
from zofed.errors import ZofedError
from zofed.runtime.experiment import check_direction_streams

# No accelerator here: the meta device stands in for one (its gaussian stream is not the CPU's).
ACCELERATOR = torch.device("meta")


def settings(name, **values):
    return get_algorithm(name).settings(**values)


@pytest.mark.parametrize("name, values", [
    ("fedmezo", {"upload": "seeds"}), ("fedkseed", {}), ("decomfl", {}), ("gamlpp", {}),
])
def test_gaussian_on_an_accelerator_is_refused_where_seeds_are_replayed(name, values):
    with pytest.raises(ZofedError, match="use directions=pool"):
        check_direction_streams(settings(name, directions="gaussian", **values), ACCELERATOR)


@pytest.mark.parametrize("name, values", [("fedmezo", {"upload": "seeds"}), ("fedkseed", {}), ("decomfl", {})])
def test_pool_is_the_same_stream_on_every_device(name, values):
    check_direction_streams(settings(name, directions="pool", **values), ACCELERATOR)


def test_fedmezo_as_published_never_replays_so_gaussian_is_fine_anywhere():
    check_direction_streams(settings("fedmezo", directions="gaussian", upload="weights", downlink="weights"), ACCELERATOR)


def test_the_cpu_is_the_servers_own_stream():
    check_direction_streams(settings("fedmezo", directions="gaussian", upload="seeds"), torch.device("cpu"))
