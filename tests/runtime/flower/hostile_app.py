"""A test-only ClientApp: zofed's own, with a mod that makes scheduled clients replace their honest reply with a hostile one.

The hostile reply is made on the client side of the Flower transport, as a real hostile node
would; which cases run comes from the test's environment (inherited by the simulation's
workers), never from the run config a node receives.
"""

from __future__ import annotations

import os

from flwr.app import Context, Message, RecordDict

from zofed.runtime.codec import decode
from zofed.runtime.flower.client_app import build_client_app
from zofed.runtime.flower.records import pack, partition_id, runtime_measurements, unpack

from ..hostile import CASE_SETS, hostile_uplink, schedule


def hostile_reply(message: Message, context: Context, call_next) -> Message:
    reply = call_next(message, context)
    cases, clients = CASE_SETS[os.environ["ZOFED_HOSTILE_CASES"]], int(os.environ["ZOFED_HOSTILE_CLIENTS"])
    case = schedule(cases, clients).get((decode(unpack(message.content)).round, partition_id(context)))
    if case is None:
        return reply
    if case == "flower-no-zofed-message":
        return Message(RecordDict({}), reply_to=message)
    return Message(pack(hostile_uplink(case, unpack(reply.content)), runtime_measurements(reply.content)),
                   reply_to=message)


app = build_client_app(train_mods=[hostile_reply])
