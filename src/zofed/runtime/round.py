"""One round, the same in every runtime: sample → configure → encode → exchange → decode → screen → aggregate → row.

Only the exchange differs between runtimes: a `Transport` carries each sampled client's encoded
downlink to it and brings back what arrived (`InProcessTransport` here, where injected faults
live; the Flower Grid's in runtime/flower/server_app.py). Everything the server decides — which
replies it applies, with which weights, what the ledger counts — happens here, once.

What the server applies is what it knows, never a client's word: each reply is decoded, screened
(runtime/screening.py: generic form, then the method's `accept` against the `Sent` the server
built for that client) and only then aggregated. A reply that cannot be decoded, parsed or
accepted is rejected and counted in the round row; it never aborts the round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from zofed.algorithms import Algorithm, ClientEnv, ServerState
from zofed.algorithms.base import Sent, server_device, tensors_on
from zofed.algorithms.downlink import forget_versions
from zofed.config import FaultsConfig, RobustConfig
from zofed.device import peak_device_memory_mb, reset_peak_device_memory, synchronize
from zofed.messages import Message
from zofed.metrics import peak_of, peak_rss_mb, reset_peak_rss
from zofed.runtime.client import KeptCopy, receive_model_
from zofed.runtime.codec import CodecError, EncodedSizes, decode, encode, encode_with_sizes, sizes_of
from zofed.runtime.faults import corrupt, reply_lost
from zofed.runtime.ledger import ByteLedger
from zofed.runtime.screening import REFERENCE_KEY, Screened, screen, short


class Population(Protocol):
    """The clients as the server and the simulated clients see them: the LLM `Experiment`, or a toy problem."""

    @property
    def local_steps(self) -> int: ...

    def sample_clients(self, round: int) -> list[int]: ...

    def client_seed(self, round: int, client: int) -> int: ...

    def examples(self, client: int) -> int | None:
        """The client's example count from the server's own partition; None where nodes own their data."""
        ...

    def client_env(self, round: int, client: int) -> ClientEnv:
        """What a (simulated) client trains with: its data and the live model's trainable tensors."""
        ...


class KeptModels(Protocol):
    def client(self, client: int, at_most: int) -> KeptCopy:
        """The client's kept copy, its newest version not past `at_most` in use."""
        ...


@dataclass
class Exchanged:
    """What came back from one exchange, by client; a sampled client in none of the first three sent nothing."""

    replies: dict[int, bytes] = field(default_factory=dict)  # the uplink bytes that arrived
    unreadable: dict[int, str] = field(default_factory=dict)  # arrived, but held no codec message
    failures: dict[int, str] = field(default_factory=dict)  # why nothing came
    measured: dict[int, dict[str, float]] = field(default_factory=dict)  # the client side's seconds, peak RSS, ...
    # True where `measured` is the clients' own word (Flower: measured on the node, unverifiable), False where
    # the server measured the client's work itself (in-process); the row labels the former client-reported
    measured_by_client: bool = False
    forget: list[int] = field(default_factory=list)  # clients that may have lost the model they kept
    row: dict = field(default_factory=dict)  # the transport's own additions to the round row
    uncounted: dict[int, int] = field(default_factory=dict)  # bytes of unreadable replies


class Transport(Protocol):
    def exchange(self, round: int, downlinks: Sequence[tuple[int, bytes]], state: ServerState) -> Exchanged: ...


def play_round(
    population: Population,
    algorithm: Algorithm,
    state: ServerState,
    round: int,
    transport: Transport,
    robust: RobustConfig,
) -> tuple[ServerState, dict]:
    """One round of any runtime; returns the new state and the round's row (without evaluation)."""
    started = time.perf_counter()
    clients = population.sample_clients(round)
    messages = algorithm.configure(state, round, clients)
    ledger = ByteLedger()
    downlinks = []
    for client, message in zip(clients, messages):
        downlink, sizes = encode_with_sizes(message)
        ledger.record(client, "down", sizes)
        downlinks.append((client, downlink))
    exchanged = transport.exchange(round, downlinks, state)

    rejected = dict(exchanged.unreadable)
    for client, size in exchanged.uncounted.items():
        ledger.record(client, "up", EncodedSizes(weights=0, records=0, metrics=0, control=size))
    replies = []
    device = server_device(state)
    for client in sorted(exchanged.replies):  # client order, whatever order they arrived in
        uplink = exchanged.replies[client]
        try:
            reply = on_device(decode(uplink), device)
        except CodecError as error:
            ledger.record(client, "up", EncodedSizes(weights=0, records=0, metrics=0, control=len(uplink)))
            rejected[client] = f"cannot be decoded ({str(error)[:200]})"
            continue
        ledger.record(client, "up", sizes_of(uplink))
        replies.append((client, reply))
    sent = {
        client: Sent(client=client, message=message, seed=population.client_seed(round, client),
                     examples=population.examples(client), steps=population.local_steps)
        for client, message in zip(clients, messages)
    }
    screened = screen(replies, sent, state, algorithm, robust, exchanged.measured)
    rejected.update(screened.rejected)
    state = algorithm.aggregate(state, round, screened.replies)
    if screened.reference:  # the default bound's reference sizes, for the next rounds with few replies
        state = replace(state, info={**state.info, REFERENCE_KEY: screened.reference})
    dropped = [client for client in clients if client in exchanged.failures]
    state = forget_versions(state, [client for client in exchanged.forget if client in dropped])

    accepted = dict(screened.replies)
    per_client = []
    for client in clients:
        if client in dropped:
            continue
        row = {"client": client}
        if client in accepted:  # screened: finite floats (train_loss may be NaN), no name of the row's own
            row |= accepted[client].metrics
        else:
            row["rejected"] = short(rejected[client])
        row |= screened.measured.get(client, {})
        row |= {"bytes_up": ledger.for_client(client, "up"), "bytes_down": ledger.for_client(client, "down")}
        per_client.append(row)
    applied = [row for row in per_client if row["client"] in accepted]
    losses = [row["train_loss"] for row in applied if math.isfinite(row["train_loss"])]
    return state, {
        "round": round,
        # who took part: `clients` were sampled; each either `answered` (a reply arrived, applied or `rejected`)
        # or was `dropped` (nothing came: `dropped_reasons`); the same fields in every runtime
        "clients": clients,
        "answered": [client for client in clients if client not in dropped],
        "train_loss": sum(losses) / len(losses) if losses else math.nan,
        "bytes_up": ledger.total("up"),
        "bytes_down": ledger.total("down"),
        "bytes_up_by_kind": ledger.by_kind("up"),
        "bytes_down_by_kind": ledger.by_kind("down"),
        "forward_passes": sum(int(row["forward_passes"]) for row in applied),
        "skipped_steps": sum(int(row["skipped_steps"]) for row in applied),
        "peak_rss_mb": max((row["peak_rss_mb"] for row in per_client if "peak_rss_mb" in row), default=None),
        "peak_device_mb": peak_of(row.get("peak_device_mb") for row in per_client),
        "seconds": time.perf_counter() - started,
        "per_client": per_client,
        "dropped": dropped,
        # reasons may quote what a client sent (a Flower error's text too): cut like every rejection
        "dropped_reasons": {str(client): short(exchanged.failures[client]) for client in dropped},
        "rejected": {str(client): short(why) for client, why in sorted(rejected.items())},
        # per-client fields (and the round's peaks taken from them) that are a client's word, unverifiable
        "client_reported": client_reported(exchanged, screened),
        **exchanged.row,
    }


def client_reported(exchanged: Exchanged, screened: Screened) -> list[str]:
    """The per-client row fields the server took on a client's word: its own measurements where it made them."""
    if not exchanged.measured_by_client:
        return []
    return sorted({key for values in screened.measured.values() for key in values})


def on_device(reply: Message, device: torch.device) -> Message:
    """A decoded reply's tensors where the server's state lives, so screening and aggregation never
    mix devices; on the CPU the very same tensors."""
    tensors = tensors_on(reply.tensors, device)
    return reply if tensors is reply.tensors else replace(reply, tensors=tensors)


def client_round(
    population: Population, algorithm: Algorithm, client: int, downlink: bytes, kept: KeptCopy | None
) -> tuple[bytes, dict[str, float]]:
    """A client's whole round, from the server's bytes to its reply's bytes; every runtime's clients run this.

    `kept`: the client's kept copy, loaded and saved in place (None: a client that keeps nothing).
    Returns the encoded reply and what the client measured (seconds, peak RSS).
    """
    reset_peak_rss()
    client_started = time.perf_counter()
    message = decode(downlink)
    env = population.client_env(message.round, client)
    device = env.tensors[0].device if env.tensors else torch.device("cpu")
    reset_peak_device_memory(device)
    message = receive_model_(message, env.tensors, env.names, kept)
    reply = algorithm.train(message, env)
    del message
    synchronize(device)  # the client's seconds include the device work it queued
    measured = {"seconds": time.perf_counter() - client_started, "peak_rss_mb": peak_rss_mb(),
                "peak_device_mb": peak_device_memory_mb(device)}  # None on the CPU
    return encode(reply), measured




class InProcessTransport:
    """Every client in this process, one after another, on the population's one model.

    Injected faults (`faults:`) act here, on the client side of the exchange: a lost reply never
    arrives, a hostile client's reply is replaced before the server sees it.
    """

    def __init__(self, population: Population, algorithm: Algorithm, kept: KeptModels, faults: FaultsConfig,
                 run_seed: int) -> None:
        self.population, self.algorithm, self.kept = population, algorithm, kept
        self.faults, self.run_seed = faults, run_seed

    def exchange(self, round: int, downlinks: Sequence[tuple[int, bytes]], state: ServerState) -> Exchanged:
        exchanged = Exchanged()
        for client, downlink in downlinks:
            uplink, measured = client_round(self.population, self.algorithm, client, downlink,
                                            self.kept.client(client, at_most=round - 1))
            if reply_lost(self.faults, self.run_seed, round, client):
                exchanged.failures[client] = "reply lost (faults.drop_rate)"
                continue
            if client in self.faults.hostile_clients:
                uplink = encode(corrupt(decode(uplink), self.faults, dict(state.weights),
                                        self.population.client_seed(round, client)))
            exchanged.replies[client] = uplink
            exchanged.measured[client] = measured
        return exchanged
