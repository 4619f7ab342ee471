"""Routing with a delivery plan cached per match: one copy per client at its highest granted
QoS with every subscription identifier, and No Local applied for the publisher only."""

from __future__ import annotations

import asyncio

import pytest

from broker.config import Config
from broker.core.engine import Engine
from broker.protocol import properties as P
from broker.protocol.packets import Publish, Subscribe, SubscriptionOptions
from broker.storage.memory import MemoryStorage
from core.test_engine_bytes import connect, settle

# (publisher, expected (qos, subscription ids) for "me", for "other") for a publish to a/b
# QoS 1; "me" holds a/# (QoS 1, No Local, id 1) and a/b (QoS 0, id 2); "other" holds
# a/+ (QoS 0, id 3) and a/b (QoS 1, id 4).
CASES = [
    ("me", (0, [2]), (1, [3, 4])),  # its own No Local subscription skips it
    ("other", (1, [1, 2]), (1, [3, 4])),
    ("third", (1, [1, 2]), (1, [3, 4])),
]


@pytest.mark.parametrize("publisher, mine, others", CASES)
def test_one_copy_per_client_and_no_local(publisher: str, mine: tuple, others: tuple) -> None:
    async def scenario() -> None:
        storage = MemoryStorage()
        await storage.open()
        engine = Engine(Config(backend="memory"), storage)
        await engine.start()
        clients = {}
        for port, (name, subs) in enumerate(
            [
                ("me", [("a/#", SubscriptionOptions(qos=1, no_local=True), 1), ("a/b", SubscriptionOptions(qos=0), 2)]),
                ("other", [("a/+", SubscriptionOptions(qos=0), 3), ("a/b", SubscriptionOptions(qos=1), 4)]),
                ("third", []),
            ]
        ):
            client = clients[name] = await connect(engine, name, port + 1, version=5)
            for topic_filter, options, sub_id in subs:
                client.send(Subscribe(sub_id, [(topic_filter, options)], {P.SUBSCRIPTION_IDENTIFIER: sub_id}))
            await settle()
            client.received()
        for _ in range(2):  # the second time with the plan cached
            clients[publisher].send(Publish("a/b", b"x", qos=1, packet_id=9))
            await settle()
            for name, expected in (("me", mine), ("other", others)):
                got = [p for p in clients[name].received() if isinstance(p, Publish)]
                assert [(p.qos, sorted(p.properties.get(P.SUBSCRIPTION_IDENTIFIER, []))) for p in got] == [expected]
            clients[publisher].received()

    asyncio.run(scenario())
