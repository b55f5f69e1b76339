"""Reply screening: malformed replies rejected with a reason; clipping, norm bounds, median, trimmed mean."""

import math

import numpy as np
import pytest
import torch

from zofed.algorithms import Sent, ServerState
from zofed.config import RobustConfig
from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.runtime.screening import MAX_REASON, MEASURED_KEYS, REFERENCE_KEY, reply_problem, screen

WEIGHTS = {"w": torch.zeros(3), "b": torch.zeros(2)}
METRICS = {"num_examples": 10.0, "train_loss": 1.0, "forward_passes": 2.0, "skipped_steps": 0.0}


class AcceptAll:
    """A method that accepts every well-formed reply: the generic screening alone."""

    def accept(self, state, sent, reply):
        return reply


def screen_replies(replies, weights, robust, steps=None):
    sent = {client: Sent(client, Message(kind="control", round=1), seed=client, examples=None, steps=steps)
            for client, _ in replies}
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


# Issue 22: one number in a reply's metrics must never take the round down, and a client must not rewrite its row.
@pytest.mark.parametrize("metrics, reason", [
    ({**METRICS, "foo": 10**400}, "'foo' is not a number"),
    ({**METRICS, "num_examples": 10**400}, "'num_examples' is not a number"),
    ({**METRICS, "forward_passes": 10**400}, "'forward_passes' is not a number"),
    ({**METRICS, "forward_passes": 10**300}, "'forward_passes' is inf, NaN or beyond"),
    ({**METRICS, "layer_forwards": math.nan}, "'layer_forwards' is inf, NaN"),
    ({**METRICS, "foo": -math.inf}, "'foo' is inf"),
    ({**METRICS, "train_loss": math.inf}, "'train_loss' is inf"),
    ({**METRICS, "client": 0.0}, "'client' would overwrite"),
    ({**METRICS, "rejected": 1.0}, "'rejected' would overwrite"),
    ({**METRICS, "bytes_up": 1.0}, "'bytes_up' would overwrite"),
    ({**METRICS, "seconds": 1.0}, "'seconds' would overwrite"),
    ({**METRICS, "peak_rss_mb": 1.0}, "'peak_rss_mb' would overwrite"),
    ({**METRICS, "steps": 3.0}, "steps negative or beyond 2"),  # the server assigned 2 local steps
    ({**METRICS, "skipped_steps": 5.0}, "skipped_steps negative or beyond 2"),
    ({**METRICS, "forward_passes": 1e7}, "forward_passes negative or beyond"),
])
def test_every_metric_is_a_bounded_finite_number_under_its_own_name(metrics, reason):
    reply = Message(kind="seeds", round=1, scalars=(1.0,), metrics=metrics)
    screened = screen_replies([(3, reply), (4, weights_reply(1.0))], WEIGHTS, RobustConfig(), steps=2)
    assert [client for client, _ in screened.replies] == [4] and reason in screened.rejected[3]


def test_a_skipped_round_s_nan_loss_is_honest():
    reply = Message(kind="seeds", round=1, scalars=(), metrics={**METRICS, "train_loss": math.nan, "skipped_steps": 2.0})
    assert screen_replies([(0, reply)], WEIGHTS, RobustConfig(), steps=2).rejected == {}


def test_accepted_metrics_and_scalars_are_floats():
    reply = Message(kind="seeds", round=1, scalars=(3,), metrics={**METRICS, "num_examples": 10, "forward_passes": 2})
    [(_, accepted)] = screen_replies([(0, reply)], WEIGHTS, RobustConfig()).replies
    assert all(type(value) is float for value in accepted.metrics.values()) and accepted.scalars == (3.0,)


class Raises:
    """A method whose accept fails on arithmetic, as a method's own check of a client's number could."""

    def __init__(self, error):
        self.error = error

    def accept(self, state, sent, reply):
        raise self.error


@pytest.mark.parametrize("error", [OverflowError("int too large"), ZeroDivisionError("0"), FloatingPointError("x"),
                                   RecursionError("deep")])
def test_arithmetic_errors_in_accept_reject_the_reply(error):
    sent = {0: Sent(0, Message(kind="control", round=1), seed=0, examples=None)}
    screened = screen([(0, weights_reply(1.0))], sent, ServerState(weights=WEIGHTS), Raises(error), RobustConfig())
    assert screened.replies == [] and type(error).__name__ in screened.rejected[0]


def test_rejection_reasons_are_truncated():
    class LrCheck:
        def accept(self, state, sent, reply):
            from zofed.algorithms import Rejected

            raise Rejected(f"claims lr {reply.config.get('lr')!r} where the server assigned 0.1")

    reply = Message(kind="seeds", round=1, scalars=(1.0,), config={"lr": "x" * 250_000}, metrics=METRICS)
    sent = {0: Sent(0, Message(kind="control", round=1), seed=0, examples=None)}
    screened = screen([(0, reply)], sent, ServerState(weights=WEIGHTS), LrCheck(), RobustConfig())
    assert len(screened.rejected[0]) <= MAX_REASON


@pytest.mark.parametrize("measured, reason", [
    ({"seconds": math.inf}, "'seconds' is negative, NaN, inf"),
    ({"peak_rss_mb": -1.0}, "'peak_rss_mb' is negative"),
    ({"peak_rss_mb": 1e300}, "beyond"),
    ({"client": 0.0}, "unknown measurement 'client'"),
])
def test_a_client_s_own_measurements_are_screened_too(measured, reason):
    sent = {c: Sent(c, Message(kind="control", round=1), seed=c, examples=None) for c in (0, 1)}
    replies = [(0, weights_reply(1.0)), (1, weights_reply(1.0))]
    screened = screen(replies, sent, ServerState(weights=WEIGHTS), AcceptAll(), RobustConfig(),
                      measured={0: measured, 1: {"seconds": 2.0, "peak_device_mb": None}})
    assert [c for c, _ in screened.replies] == [1] and reason in screened.rejected[0]
    assert screened.measured == {1: {"seconds": 2.0, "peak_device_mb": None}}


def test_runtime_measurements_are_the_ones_screening_knows():
    from zofed.runtime.flower.records import RUNTIME_KEYS

    assert set(RUNTIME_KEYS) <= set(MEASURED_KEYS)


# Issue 22: safe by default, with no `robust:` setting.
def test_a_huge_scalar_is_rejected_with_default_settings():
    honest = [(c, scalars_reply([1.0, -2.0], seeds=[1, 2])) for c in (1, 2)]
    screened = screen_replies([(0, scalars_reply([1e30, 1.0], seeds=[1, 2])), *honest], WEIGHTS, RobustConfig())
    assert [c for c, _ in screened.replies] == [1, 2] and "scalar" in screened.rejected[0]


def test_default_bound_scales_an_outlying_reply_to_ten_times_the_round_s_median():
    honest = [(c, scalars_reply([1.0, -1.0 * c])) for c in (1, 2, 3)]  # RMS 1, √2.5, √5
    screened = screen_replies([(0, scalars_reply([1e6, 1e6])), *honest], WEIGHTS, RobustConfig())
    assert [r.scalars for _, r in screened.replies[1:]] == [r.scalars for _, r in honest]  # honest: untouched
    median = float(np.median([1e6, 1.0, math.sqrt(2.5), math.sqrt(5)]))
    assert math.sqrt(sum(s * s for s in screened.replies[0][1].scalars) / 2) == pytest.approx(10 * median, rel=1e-12)
    weights = [(0, weights_reply(1e6))] + [(c, weights_reply(0.5 + 0.1 * c)) for c in (1, 2, 3)]
    screened = screen_replies(weights, WEIGHTS, RobustConfig())
    norm = float(torch.cat([t.flatten() for t in screened.replies[0][1].tensors.values()]).norm())
    assert norm == pytest.approx(10 * math.sqrt(5) * 0.75, rel=1e-5)  # 10 × the median update norm
    off = screen_replies([(0, scalars_reply([1e6, 1e6])), *honest], WEIGHTS, RobustConfig(default_bound="off"))
    assert off.replies[0][1].scalars == (1e6, 1e6)


def test_default_bound_counts_records_so_one_inflated_record_is_bounded_too():
    # the record-count attack: only the last step's record, its g inflated ×100
    honest = [(c, scalars_reply([1.0, -1.0, 1.0, -1.0])) for c in (1, 2, 3)]
    screened = screen_replies([(0, scalars_reply([100.0])), *honest], WEIGHTS, RobustConfig())
    assert screened.replies[0][1].scalars == pytest.approx((10.0,))


def test_with_few_replies_the_previous_round_s_median_bounds():
    state = ServerState(weights=WEIGHTS, info={REFERENCE_KEY: {"scalar_rms": 2.0}})
    sent = {c: Sent(c, Message(kind="control", round=1), seed=c, examples=None) for c in (0, 1)}
    replies = [(0, scalars_reply([1e9])), (1, scalars_reply([1.0]))]
    screened = screen(replies, sent, state, AcceptAll(), RobustConfig())
    assert screened.replies[0][1].scalars == (20.0,) and screened.replies[1][1].scalars == (1.0,)
    assert screened.reference == {"scalar_rms": 2.0}


def test_default_bound_is_a_config_setting_that_can_be_turned_off(tmp_path):
    from .helpers import tiny_config

    assert tiny_config(tmp_path, "fedkseed").robust.default_bound == 10.0
    assert tiny_config(tmp_path, "fedkseed", "robust.default_bound=off").robust.default_bound is None
    assert tiny_config(tmp_path, "fedkseed", "robust.default_bound=4").robust.default_bound == 4.0
    for bad in ("inf", ".nan", "0.5"):
        with pytest.raises(ZofedError):
            tiny_config(tmp_path, "fedkseed", f"robust.default_bound={bad}")
