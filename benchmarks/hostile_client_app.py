"""A benchmark-only ClientApp: zofed's own, with a mod that makes the hostile clients corrupt every reply.

The corruption is the in-process runtime's (`runtime/faults.py`, `faults.hostile_*`, or an
issue-22 attack of `benchmarks/hostile_clients.py`), made here on the client side of Flower's
transport, as a hostile node would: so `benchmarks/hostile_clients.py --runtime flower-sim` can be
compared case by case with the local runtime. Which clients and how
come from the benchmark's environment (inherited by the simulation's workers), never from the run
config a node receives (the server strips `faults` from it).
"""

from __future__ import annotations

import json
import os

import torch
from flwr.app import Context, Message

from zofed.config import FaultsConfig
from zofed.runtime.codec import decode, encode
from zofed.runtime.experiment import CLIENT_SEED_STREAM
from zofed.runtime.faults import corrupt
from zofed.runtime.flower.client_app import build_client_app
from zofed.runtime.flower.client_train import node_run_config
from zofed.runtime.flower.records import pack, partition_id, runtime_measurements, unpack
from zofed.zo.seeds import mix_seed

ENV = "ZOFED_BENCH_FAULTS"  # FaultsConfig's fields as JSON
ATTACK_ENV = "ZOFED_BENCH_ATTACK"  # an issue-22 attack of benchmarks/hostile_clients.py (`attack_reply`), or empty
HOSTILE_CLIENT = 3  # benchmarks/hostile_clients.py's


def corrupt_reply(message: Message, context: Context, call_next) -> Message:
    reply = call_next(message, context)
    faults = FaultsConfig(**json.loads(os.environ.get(ENV, "{}")))
    client, attack = partition_id(context), os.environ.get(ATTACK_ENV, "")
    if attack and client == HOSTILE_CLIENT:
        from benchmarks.hostile_clients import attack_reply

        hostile = attack_reply(attack, decode(unpack(reply.content)))
        return Message(pack(encode(hostile), runtime_measurements(reply.content)), reply_to=message)
    if client not in faults.hostile_clients:
        return reply
    received, honest = decode(unpack(message.content)), decode(unpack(reply.content))
    # the in-process runtime attacks a weights reply through its update from the global weights, which
    # a client holds as the weights the server sent it; other replies have no base (zeros of their shape)
    weights = dict(received.tensors) or {name: torch.zeros_like(tensor) for name, tensor in honest.tensors.items()}
    seed = mix_seed(node_run_config(context).seed, CLIENT_SEED_STREAM, honest.round, client)
    hostile = corrupt(honest, faults, weights, seed)
    return Message(pack(encode(hostile), runtime_measurements(reply.content)), reply_to=message)


app = build_client_app(train_mods=[corrupt_reply])
