"""A test-only ClientApp: zofed's own, except that scheduled clients replace their honest reply with a hostile one.

The hostile reply is made on the client side of the Flower transport, as a real hostile node
would; which cases run comes from the test's environment (inherited by the simulation's
workers), never from the run config a node receives.
"""

from __future__ import annotations

import os

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from zofed.runtime.codec import decode
from zofed.runtime.flower import client_app as zofed_client
from zofed.runtime.flower.records import pack, runtime_measurements, unpack

from ..hostile import CASE_SETS, hostile_uplink, schedule

app = ClientApp()


@app.query()
def hello(message: Message, context: Context) -> Message:
    return zofed_client.hello(message, context)


@app.train()
def train(message: Message, context: Context) -> Message:
    reply = zofed_client.train(message, context)
    cases, clients = CASE_SETS[os.environ["ZOFED_HOSTILE_CASES"]], int(os.environ["ZOFED_HOSTILE_CLIENTS"])
    case = schedule(cases, clients).get((decode(unpack(message.content)).round, zofed_client.partition_id(context)))
    if case is None:
        return reply
    if case == "flower-no-zofed-message":
        return Message(RecordDict({}), reply_to=message)
    measured = runtime_measurements(reply.content)
    return Message(pack(hostile_uplink(case, unpack(reply.content)), measured), reply_to=message)
