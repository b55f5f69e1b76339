"""The server side of the model downlink: weights, or (seed, coeff) records to replay.

A seed-upload method moves the global model each round by a list of (seed, coeff) records. With
`downlink: replay` the server keeps the last `max_lag` rounds of those records and sends a
client only the rounds since the version it last synced to; a client further behind, or never
seen, gets the weights (bounded catch-up: the log never grows past `max_lag` rounds).

Versions: the global model after round r's aggregation is version r (the initial model is 0);
a client sampled in round r syncs to version r − 1. The server learns a client's version from
its reply, so a client that received a round's model but never answered is sent the same rounds
again, and skips those it already holds (every segment carries its round).

The server applies exactly the records it sends — coefficients rounded to float32, as the codec
carries them, applied in the same order — so a client that replays them from the same version
holds bit-for-bit the server's weights (tested).

Block records (ZorBA): a record may move only some tensors (one layer's), named by view index.
A round's segment then carries a small table of blocks, as [start, stop) ranges, and each
record's row in it; a record without blocks moves every tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from zofed.algorithms.base import ServerState
from zofed.algorithms.settings import ZOSettings
from zofed.messages import JsonValue, Message
from zofed.zo import DirectionSampler, Scratch, replay_
from zofed.zo.blocks import range_indices, to_ranges

Downlink = Literal["weights", "replay"]
DEFAULT_MAX_LAG = 10


class DownlinkSettings(ZOSettings):
    """The settings of a ZO method whose server moves the model by records it can send instead of the weights."""

    downlink: Downlink = Field("weights", description="send clients the weights, or the records since their version")
    max_lag: int = Field(DEFAULT_MAX_LAG, ge=1, le=10_000, description="rounds of records the server keeps for replay")


def wire_records(seeds: Sequence[int], coeffs: Sequence[float]) -> list[tuple[int, float]]:
    """Records as a client will receive them: coefficients rounded to float32 like the codec.

    Zero coefficients (skipped steps, unused candidate seeds) move nothing and are dropped.
    """
    rounded = np.asarray(coeffs, dtype=np.float32).tolist()
    return [(int(seed), coeff) for seed, coeff in zip(seeds, rounded) if coeff != 0.0]


def apply_round(
    state: ServerState,
    round: int,
    records: Sequence[tuple[int, float]],
    repliers: Sequence[int],
    settings: DownlinkSettings,
    directions: DirectionSampler | None,
    info: Mapping[str, JsonValue] | None = None,
    blocks: Sequence[Sequence[int]] | None = None,
) -> ServerState:
    """The next server state: weights moved by `records` (already float32-rounded), log and versions updated.

    `info` is the method's own new bookkeeping (default: the old state's); the downlink keys are
    added on top of it. `blocks[k]`, when given, are the view indices record k moves.
    """
    weights = dict(state.weights)
    if records:
        moved = [tensor.clone() for tensor in state.weights.values()]
        replay_(moved, records, directions, Scratch(), blocks)
        weights = dict(zip(state.weights, moved))
    info = dict(state.info if info is None else info)
    if settings.downlink == "replay":
        segment = {"round": round, "seeds": [seed for seed, _ in records], "coeffs": [coeff for _, coeff in records]}
        if blocks is not None:
            segment |= block_table(blocks)
        info["replay_log"] = (list(state.info.get("replay_log", [])) + [segment])[-settings.max_lag :]
        # A client whose version precedes the log can never replay again (it gets the weights):
        # forgetting it keeps this map, and the checkpoint, bounded by max_lag rounds of repliers.
        versions = {client: version for client, version in state.info.get("client_versions", {}).items()
                    if version >= round - settings.max_lag}
        versions.update({str(client): round - 1 for client in repliers})
        info["client_versions"] = versions
    return ServerState(weights=weights, buffers=state.buffers, info=info)


def block_table(blocks: Sequence[Sequence[int]]) -> dict[str, JsonValue]:
    """{"blocks": distinct blocks as ranges, "block_of": each record's row}: a layer's block is named once."""
    rows: dict[tuple[int, ...], int] = {}
    of = [rows.setdefault(tuple(block), len(rows)) for block in blocks]
    return {"blocks": [to_ranges(block) for block in rows], "block_of": of}


def skip_round(state: ServerState, round: int, settings: DownlinkSettings) -> ServerState:
    """A round that changed nothing (no usable reply) still advances the version: log it empty."""
    return apply_round(state, round, [], [], settings, directions=None)


def model_message(
    state: ServerState, round: int, client: int, config: Mapping[str, JsonValue], settings: DownlinkSettings,
    scalars: tuple[float, ...] = (), weights: Mapping | None = None,
) -> Message:
    """What client `client` receives in `round`: records since its version, or the weights.

    `scalars` are the method's own per-message values; in a replay message they follow the
    records' coefficients. `weights` replaces the state's weights in a weights message (a method
    that sends some tensors in lower precision).
    """
    known = state.info.get("client_versions", {}).get(str(client))
    segments = [s for s in state.info.get("replay_log", []) if known is not None and s["round"] > known]
    reachable = segments and segments[0]["round"] == known + 1 and segments[-1]["round"] == round - 1
    if settings.downlink == "replay" and known is not None and (known == round - 1 or reachable):
        replay = {"rounds": [s["round"] for s in segments], "counts": [len(s["seeds"]) for s in segments],
                  "base_version": known}
        if any("blocks" in s for s in segments):
            replay["blocks"] = [{"blocks": s["blocks"], "block_of": s["block_of"]} if "blocks" in s else None
                                for s in segments]
        return Message(
            kind="replay",
            round=round,
            config={**config, "replay": replay},
            seeds=tuple(seed for s in segments for seed in s["seeds"]),
            scalars=tuple(coeff for s in segments for coeff in s["coeffs"]) + tuple(scalars),
        )
    return Message(
        kind="weights",
        round=round,
        config={**config, "keep_model": settings.downlink == "replay"},
        tensors=state.weights if weights is None else weights,
        scalars=scalars,
    )


Segment = tuple[int, list[tuple[int, float]], list[list[int]] | None]


def replay_segments(message: Message) -> list[Segment]:
    """(round, records, blocks) per round carried by a replay message, oldest first.

    blocks[k] are the view indices record k moves; None when the round's records move every tensor.
    """
    replay = message.config["replay"]
    tables = replay.get("blocks") or [None] * len(replay["rounds"])
    segments, start = [], 0
    for round, count, table in zip(replay["rounds"], replay["counts"], tables):
        records = list(zip(message.seeds[start : start + count], message.scalars[start : start + count]))
        blocks = None
        if table is not None:
            rows = [range_indices(ranges) for ranges in table["blocks"]]
            blocks = [rows[int(row)] for row in table["block_of"]]
        segments.append((int(round), records, blocks))
        start += count
    return segments


def method_scalars(message: Message) -> tuple[float, ...]:
    """The method's own scalars: those after a replay message's record coefficients."""
    if message.kind == "replay":
        return message.scalars[len(message.seeds) :]
    return message.scalars


def forget_versions(state: ServerState, clients: Sequence[int]) -> ServerState:
    """The server stops assuming these clients hold a model: their next message carries the weights.

    For a runtime whose clients may have lost what they kept (a restarted node, a new session, a
    client that failed mid-round); costs one weights downlink each, changes no weights.
    """
    versions = state.info.get("client_versions")
    if not versions:
        return state
    forgotten = {str(client) for client in clients}
    remaining = {client: version for client, version in versions.items() if client not in forgotten}
    return ServerState(weights=state.weights, buffers=state.buffers, info={**state.info, "client_versions": remaining})
