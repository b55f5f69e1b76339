"""Hostile replies, made from an honest reply's bytes on the client side of a transport, for every runtime's tests.

`CASES` maps a case name to what the hostile client sends instead of its honest reply. A schedule
gives each (round, client) at most one case, so one run carries many cases: local runs take them
through `HostileTransport`, flower-sim runs through the ClientApp wrapper in flower/hostile_app.py.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from zofed.messages import Message
from zofed.runtime.codec import decode, encode
from zofed.runtime.round import Exchanged
from zofed.zo import mix_seed


def _edit(**changes):
    def make(uplink: bytes) -> bytes:
        return encode(replace(decode(uplink), **changes))
    return make


def _with(change):
    def make(uplink: bytes) -> bytes:
        return encode(change(decode(uplink)))
    return make


def _metric(key, value):
    return _with(lambda m: replace(m, metrics={**m.metrics, key: value}))


def _config(**values):
    return _with(lambda m: replace(m, config={**m.config, **values}))


def _scalar(index, value):
    return _with(lambda m: replace(m, scalars=tuple(value if i == index else s for i, s in enumerate(m.scalars))))


def _unencoded_metrics(metrics_json: str):
    """Metrics the codec's encoder would not write (a list, a string value): spliced into the header."""
    def make(uplink: bytes) -> bytes:
        message = decode(uplink)
        marker = 987654.25
        data = encode(replace(message, metrics={**message.metrics, "zz": marker}))
        header_length = int.from_bytes(data[4:8], "little")
        header = data[8 : 8 + header_length].decode()
        start = header.index('"metrics":') + len('"metrics":')
        end = header.index(str(marker), start) + len(str(marker)) + 1  # through the metrics' closing brace
        header = header[:start] + metrics_json + header[end:]
        body = header.encode()
        return data[:4] + len(body).to_bytes(4, "little") + body + data[8 + header_length :]
    return make


def _foreign_seeds(m: Message) -> Message:
    return replace(m, seeds=tuple(mix_seed(424242, step) for step in range(len(m.seeds))))


# Cases every seeds-upload method must refuse (FedMeZO `upload: seeds` runs them all).
SEEDS_CASES = {
    "garbage-bytes": lambda uplink: b"garbage",
    "empty-bytes": lambda uplink: b"",
    "truncated": lambda uplink: uplink[: len(uplink) // 2],
    "bad-magic": lambda uplink: b"EVIL" + uplink[4:],
    "trailing-bytes": lambda uplink: uplink + bytes(8),
    "nan-scalar": _scalar(0, math.nan),
    "inf-scalar": _scalar(0, math.inf),
    "negative-examples": _metric("num_examples", -5.0),
    "zero-examples": _metric("num_examples", 0.0),
    "huge-examples": _metric("num_examples", 1e12),
    "forged-example-count": _with(lambda m: replace(m, metrics={**m.metrics, "num_examples": m.metrics["num_examples"] + 1})),
    "duplicated-seeds": _with(lambda m: replace(m, seeds=(m.seeds[0],) * len(m.seeds))),
    "foreign-seeds": _with(_foreign_seeds),
    "more-records-than-steps": _with(lambda m: replace(m, seeds=m.seeds * 3, scalars=m.scalars * 3)),
    "seeds-without-scalars": _with(lambda m: replace(m, scalars=m.scalars[:-1])),
    "old-reply-replayed": _with(lambda m: replace(m, round=m.round - 1)),
    "forged-lr-huge": _config(lr=1e6),
    "forged-lr-nan": _config(lr=math.nan),
    "forged-lr-negative": _with(lambda m: replace(m, config={**m.config, "lr": -m.config["lr"]})),
    "missing-lr": _with(lambda m: replace(m, config={})),
    "non-mapping-metrics": _unencoded_metrics("[1,2,3]"),
    "string-metric": _unencoded_metrics('{"num_examples":10,"train_loss":"x","forward_passes":2,"skipped_steps":0}'),
    "oversized-metrics": _with(lambda m: replace(m, metrics={**m.metrics, **{f"k{i}": 0.0 for i in range(500_000)}})),
    "missing-train-loss": _with(lambda m: replace(m, metrics={k: v for k, v in m.metrics.items() if k != "train_loss"})),
    "negative-forward-passes": _metric("forward_passes", -1.0),
    "oversized-config": _config(pad="x" * (1 << 19)),
    "wrong-kind": _with(lambda m: replace(m, kind="replay")),
    "weights-instead-of-seeds": _with(lambda m: replace(m, kind="weights", seeds=(), scalars=(),
                                                          tensors={"w": torch.zeros(2)})),
    # issue 22: one number in the metrics, a metric named like the row's own fields, a 250 KB lr, a 1e30 scalar
    "int-1e400-metric": _metric("foo", 10**400),
    "int-1e400-examples": _metric("num_examples", 10**400),
    "int-1e400-forward-passes": _metric("forward_passes", 10**400),
    "nan-layer-forwards": _metric("layer_forwards", math.nan),
    "client-field-metric": _metric("client", 0.0),
    "seconds-field-metric": _metric("seconds", 0.0),
    "long-string-lr": _config(lr="x" * 250_000),
    "huge-scalar": _scalar(0, 1e30),
}

ZORBA_CASES = {
    "forged-zorba-layers": _with(lambda m: replace(m, config={**m.config, "layers": {"0": [[0, 1]]}})),
    "zorba-extra-layer": _with(lambda m: replace(m, config={**m.config, "layers": {**m.config["layers"], "99": [[0, 1]]}})),
    "zorba-forged-lr": _config(lr=1.0),
    "zorba-duplicated-seeds": _with(lambda m: replace(m, seeds=(m.seeds[0],) * len(m.seeds))),
}

GAMLPP_CASES = {
    "gamlpp-short-scales": _with(lambda m: replace(m, config={**m.config, "scales": m.config["scales"][:-1]})),
    "gamlpp-nan-scales": _with(lambda m: replace(m, config={**m.config, "scales": [math.nan] * len(m.config["scales"])})),
    "gamlpp-scaled-up": _with(lambda m: replace(m, config={**m.config, "scales": [10.0 * s for s in m.config["scales"]]})),
    "gamlpp-huge-energy": _with(lambda m: replace(m, config={**m.config, "energy": [1.0] * 1_000_000})),
    "gamlpp-nan-energy": _with(lambda m: replace(m, config={**m.config, "energy": [math.nan] * len(m.config["scales"])})),
}

DECOMFL_CASES = {
    "decomfl-short": _with(lambda m: replace(m, scalars=m.scalars[:-1])),
    "decomfl-long": _with(lambda m: replace(m, scalars=m.scalars * 2)),
    "decomfl-with-seeds": _with(lambda m: replace(m, seeds=tuple(range(len(m.scalars))))),
}

# Made by the Flower transport's client side only: a reply without a zofed message in it.
FLOWER_CASES = {"flower-no-zofed-message": None}

CASES = {**SEEDS_CASES, **ZORBA_CASES, **GAMLPP_CASES, **DECOMFL_CASES}
CASE_SETS = {"seeds": [*SEEDS_CASES, *FLOWER_CASES], "zorba": list(ZORBA_CASES), "gamlpp": list(GAMLPP_CASES),
             "decomfl": list(DECOMFL_CASES)}


def schedule(cases, clients: int) -> dict[tuple[int, int], str]:
    """(round, client) -> case: clients 1..clients-1 hostile, one case each per round; client 0 stays honest."""
    return {(1 + index // (clients - 1), 1 + index % (clients - 1)): case for index, case in enumerate(cases)}


def hostile_uplink(case: str, uplink: bytes) -> bytes:
    return CASES[case](uplink)


class HostileTransport:
    """An in-process exchange in which scheduled clients send a hostile reply, or (`silent`) nothing at all."""

    def __init__(self, inner, plan: dict[tuple[int, int], str], silent: bool = False) -> None:
        self.inner, self.plan, self.silent = inner, plan, silent

    def exchange(self, round, downlinks, state) -> Exchanged:
        exchanged = self.inner.exchange(round, downlinks, state)
        for (at, client), case in self.plan.items():
            if at != round or client not in exchanged.replies:
                continue
            if self.silent:
                del exchanged.replies[client]
                exchanged.failures[client] = "sent nothing"
            elif case in FLOWER_CASES:  # what the Grid transport reports for it
                del exchanged.replies[client]
                exchanged.unreadable[client] = "no zofed message in the Flower reply"
            else:
                exchanged.replies[client] = hostile_uplink(case, exchanged.replies[client])
        return exchanged
