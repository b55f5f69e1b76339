"""Reply screening: malformed replies rejected with a reason; clipping, norm bounds, median, trimmed mean."""

import math

import pytest
import torch

from zofed.algorithms import Sent, ServerState
from zofed.config import RobustConfig
from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.runtime.screening import reply_problem, screen

WEIGHTS = {"w": torch.zeros(3), "b": torch.zeros(2)}
METRICS = {"num_examples": 10.0, "train_loss": 1.0, "forward_passes": 2.0, "skipped_steps": 0.0}


class AcceptAll:
    """A method that accepts every well-formed reply: the generic screening alone."""

    def accept(self, state, sent, reply):
        return reply


def screen_replies(replies, weights, robust):
    sent = {client: Sent(client, Message(kind="control", round=1), seed=client, examples=None) for client, _ in replies}
    return screen(replies, sent, ServerState(weights=weights), AcceptAll(), robust)


def weights_reply(value: float, **changes) -> Message:
    tensors = {"w": torch.full((3,), value), "b": torch.full((2,), value)}
    return Message(kind="weights", round=1, tensors=tensors, metrics=METRICS, **changes)


def scalars_reply(values, seeds=()) -> Message:
    return Message(kind="seeds", round=1, seeds=tuple(seeds), scalars=tuple(values), metrics=METRICS)


@pytest.mark.parametrize("reply, reason", [
    (Message(kind="replay", round=1, metrics=METRICS), "does not send"),
    (Message(kind="weights", round=1, metrics=METRICS), "without tensors"),
    (Message(kind="weights", round=1, tensors={"w": torch.zeros(3)}, metrics=METRICS), "names differ"),
    (Message(kind="weights", round=1, tensors={"w": torch.zeros(4), "b": torch.zeros(2)}, metrics=METRICS), "shape"),
    (Message(kind="weights", round=1, tensors={"w": torch.zeros(3, dtype=torch.float64), "b": torch.zeros(2)}, metrics=METRICS), "shape"),
    (weights_reply(float("nan")), "NaN"),
    (scalars_reply([1.0, math.inf], seeds=[1, 2]), "NaN, inf"),
    (scalars_reply([1.0, 2.0], seeds=[1]), "1 seeds for 2 scalars"),
    (scalars_reply([1.0], seeds=[-5]), "outside"),
    (Message(kind="seeds", round=1, scalars=(1.0,), metrics={**METRICS, "num_examples": 0.0}), "num_examples"),
    (Message(kind="seeds", round=1, scalars=(1.0,), metrics={"train_loss": 1.0}), "lack num_examples"),
    (Message(kind="seeds", round=1, scalars=(1.0,), metrics=[1, 2]), "not a mapping"),
    (Message(kind="seeds", round=1, scalars=(1.0,), metrics={**METRICS, "extra": "x"}), "'extra' is not a number"),
    (Message(kind="seeds", round=1, scalars=(1.0,), metrics={**METRICS, "flag": True}), "'flag' is not a number"),
    (Message(kind="seeds", round=1, scalars=(1.0,), metrics={**METRICS, **{f"k{i}": 1.0 for i in range(500_000)}}),
     "more than 64"),
    (Message(kind="seeds", round=1, scalars=(1.0,), metrics={**METRICS, "forward_passes": -1.0}), "negative"),
    (Message(kind="seeds", round=1, scalars=(1.0,), config="lr", metrics=METRICS), "config is a str"),
    (Message(kind="seeds", round=1, scalars=(1.0,), config={"x": "y" * (1 << 19)}, metrics=METRICS), "bytes, more than"),
])
def test_malformed_replies_are_rejected_with_a_reason(reply, reason):
    problem = reply_problem(reply, WEIGHTS)
    assert problem is not None and reason in problem
    screened = screen_replies([(3, reply), (4, weights_reply(1.0))], WEIGHTS, RobustConfig())
    assert [client for client, _ in screened.replies] == [4] and reason in screened.rejected[3]


def test_clipping_and_norm_bound():
    screened = screen_replies([(0, scalars_reply([5.0, -0.5], seeds=[1, 2]))], WEIGHTS, RobustConfig(clip_scalar=1.0))
    assert screened.replies[0][1].scalars == (1.0, -0.5)
    screened = screen_replies([(0, scalars_reply([3.0, 4.0]))], WEIGHTS, RobustConfig(norm_bound=1.0))
    assert screened.replies[0][1].scalars == pytest.approx((0.6, 0.8))
    screened = screen_replies([(0, weights_reply(10.0))], WEIGHTS, RobustConfig(norm_bound=1.0))
    update = torch.cat([t.flatten() for t in screened.replies[0][1].tensors.values()])
    assert float(update.norm()) == pytest.approx(1.0, rel=1e-6)


def test_median_and_trimmed_mean_ignore_one_outlier():
    replies = [(c, weights_reply(v)) for c, v in enumerate([1.0, 1.2, 0.8, 1.1, 1e3])]
    for aggregator, expected in (("median", 1.1), ("trimmed-mean", (1.0 + 1.2 + 1.1) / 3)):
        screened = screen_replies(replies, WEIGHTS, RobustConfig(aggregator=aggregator, trim_fraction=0.2))
        assert all(torch.allclose(r.tensors["w"], torch.full((3,), expected)) for _, r in screened.replies)
    shared = [(c, scalars_reply([v, -v])) for c, v in enumerate([1.0, 2.0, 3.0, 1e6])]
    screened = screen_replies(shared, WEIGHTS, RobustConfig(aggregator="median"))
    assert screened.replies[0][1].scalars == (2.5, -2.5)


def test_median_needs_shared_coordinates():
    own_seeds = [(0, scalars_reply([1.0], seeds=[10])), (1, scalars_reply([2.0], seeds=[11]))]
    with pytest.raises(ZofedError, match="shared coordinates"):
        screen_replies(own_seeds, WEIGHTS, RobustConfig(aggregator="median"))


def test_deployment_weights_are_equal_or_capped_claims():
    huge = Message(kind="seeds", round=1, scalars=(1.0,), metrics={**METRICS, "num_examples": 1e12})
    small = Message(kind="seeds", round=1, scalars=(1.0,), metrics={**METRICS, "num_examples": 5.0})
    equal = screen_replies([(0, huge), (1, small)], WEIGHTS, RobustConfig())
    assert [r.metrics["num_examples"] for _, r in equal.replies] == [1.0, 1.0]
    capped = screen_replies([(0, huge), (1, small)], WEIGHTS, RobustConfig(node_examples="capped", max_node_examples=100))
    assert [r.metrics["num_examples"] for _, r in capped.replies] == [100.0, 5.0]


def test_trimmed_mean_that_trims_nobody_is_refused_at_config_time(tmp_path):
    from .helpers import tiny_config

    with pytest.raises(ZofedError, match="trims no client of the 2 sampled"):
        tiny_config(tmp_path, "fedkseed", "robust.aggregator=trimmed-mean", "robust.trim_fraction=0.2")
    tiny_config(tmp_path, "fedkseed", "clients=5", "robust.aggregator=trimmed-mean", "robust.trim_fraction=0.2")
