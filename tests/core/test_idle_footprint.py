"""Issue 13: an idle client pays only for what it uses.

An empty deque is 760 bytes, an empty set 216: per idle connection the broker used to
hold four deques and three sets it never filled (7 KiB per connection where mosquitto
needs 0.7). These check, without sockets, that a connected idle client and an offline
session hold the shared read-only empties of ``core/empty.py`` (or nothing) instead of
containers of their own, and that using them gives the client its own. The bytes are
measured by ``python -m bench --scenarios memory``, not here.
"""

from __future__ import annotations

import asyncio

from broker.config import Config
from broker.core.connection import Connection
from broker.core.empty import EMPTY_DEQUE, EMPTY_DICT, EMPTY_SET
from broker.core.engine import Engine
from broker.protocol.codec import PacketReader, encode
from broker.protocol.packets import Connack, Connect, Puback, Publish, Suback, Subscribe, SubscriptionOptions
from broker.storage.memory import MemoryStorage
from coretransport import FakeTransport


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Client:
    def __init__(self, engine: Engine, client_id: str, clean: bool = True) -> None:
        self.transport = FakeTransport()
        self.conn = Connection(engine, self.transport)
        self.reader = PacketReader(client_side=True, version=4)
        self.send(Connect(client_id, clean_start=clean, keepalive=300))

    def send(self, packet) -> None:
        self.conn.data_received(encode(packet, 4))

    def received(self) -> list:
        data = bytes(self.transport.written)
        self.transport.written.clear()
        return self.reader.feed(data) if data else []


def assert_idle(client: Client) -> None:
    conn = client.conn
    session = conn.session
    assert session is not None
    assert conn.out is None and conn.ordered_output is EMPTY_DEQUE and conn.waiting is EMPTY_DEQUE
    assert conn.held_by is EMPTY_SET and conn.paused_for is EMPTY_SET and conn.held is None
    assert conn.aliases_in is None and conn.aliases_out is None and conn.meter is None
    assert conn.reader._chunks is None
    assert session.pending is EMPTY_DEQUE and session.inflight is EMPTY_DICT
    assert session.inbound_qos2 is EMPTY_SET and session.subscriptions is EMPTY_DICT


def test_an_idle_client_holds_no_container_of_its_own_until_it_uses_one() -> None:
    async def scenario() -> None:
        storage = MemoryStorage()
        await storage.open()
        engine = Engine(Config(backend="memory", sys_interval=0), storage)
        await engine.start()
        sub = Client(engine, "sub", clean=False)
        await settle()
        assert sub.received() == [Connack(False, 0)]
        assert_idle(sub)

        sub.send(Subscribe(1, [("t/#", SubscriptionOptions(qos=2))]))
        pub = Client(engine, "pub")
        await settle()
        assert sub.received() == [Suback(1, [2])]
        pub.received()
        for packet_id in (1, 2):
            pub.send(Publish("t/a", b"x", qos=2, packet_id=packet_id))
        pub.send(Publish("t/a", b"y", qos=1, packet_id=3))
        await settle()
        session = sub.conn.session
        assert session is not None and pub.conn.session is not None
        # Used: each of them now has its own, and the shared ones are still empty.
        assert session.subscriptions is not EMPTY_DICT and len(session.inflight) == 3
        assert pub.conn.session.inbound_qos2 == {1, 2}
        assert not EMPTY_DEQUE and not EMPTY_SET and not EMPTY_DICT
        [*publishes] = sub.received()
        assert [p.payload for p in publishes] == [b"x", b"x", b"y"]

        sub.transport.closed = True
        sub.conn.connection_lost(None)  # offline: the session keeps its subscription, not its tables
        assert engine.sessions["sub"] is session and session.connection is None
        assert session.pending is EMPTY_DEQUE and session.inflight is EMPTY_DICT
        assert session.queued_count == 3  # in storage, to be sent again

        again = Client(engine, "sub", clean=False)
        await settle()
        resent = again.received()
        assert resent[0] == Connack(True, 0) and [p.payload for p in resent[1:]] == [b"x", b"x", b"y"]
        again.send(Puback(resent[3].packet_id))
        await settle()
        await engine.shutdown()

    asyncio.run(scenario())
