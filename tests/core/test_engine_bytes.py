"""The engine driven with byte fixtures, without sockets: the sans-I/O core at work.

A fake transport records what the broker writes; storage is the in-memory backend.
"""

from __future__ import annotations

import asyncio

from broker.config import Config
from broker.core.connection import Connection
from broker.core.engine import Engine
from broker.protocol import properties as P
from broker.protocol.codec import PacketReader, encode
from broker.protocol.packets import (
    Connack,
    Connect,
    Disconnect,
    Puback,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
)
from broker.storage.memory import MemoryStorage
from coretransport import FakeTransport


class Client:
    """One fake client connection: feeds bytes in, decodes what the broker wrote."""

    def __init__(self, engine: Engine, port: int, version: int = 4) -> None:
        self.transport = FakeTransport(port)
        self.conn = Connection(engine, self.transport)
        self.version = version
        self.reader = PacketReader(client_side=True, version=version)  # reads the broker's side

    def send(self, packet) -> None:
        self.conn.data_received(encode(packet, self.version))

    def received(self) -> list:
        data = bytes(self.transport.written)
        self.transport.written.clear()
        return self.reader.feed(data) if data else []


async def settle() -> None:
    """Let commits, queue reads and the end-of-iteration writes run."""
    for _ in range(20):
        await asyncio.sleep(0)


async def connect(engine: Engine, client_id: str, port: int, version: int = 4, clean: bool = True, props: dict | None = None) -> Client:
    client = Client(engine, port, version)
    client.send(Connect(client_id, protocol_level=version, clean_start=clean, keepalive=30, properties=props or {}))
    await settle()
    return client


def test_connect_gets_connack_and_publish_is_routed() -> None:
    async def scenario() -> None:
        storage = MemoryStorage()
        await storage.open()
        engine = Engine(Config(backend="memory"), storage)
        await engine.start()
        sub = await connect(engine, "sub", 1)
        assert sub.received() == [Connack(False, 0)]
        sub.send(Subscribe(1, [("a/+", SubscriptionOptions(qos=1))]))
        await settle()
        assert sub.received() == [Suback(1, [1])]
        pub = await connect(engine, "pub", 2)
        pub.received()
        pub.send(Publish("a/b", b"hello", qos=1, packet_id=7))
        await settle()
        assert pub.received() == [Puback(7)]
        [delivered] = sub.received()
        assert (delivered.topic, delivered.payload, delivered.qos, delivered.packet_id) == ("a/b", b"hello", 1, 1)

    asyncio.run(scenario())


def test_qos2_resent_before_pubrel_is_routed_once() -> None:
    async def scenario() -> None:
        storage = MemoryStorage()
        await storage.open()
        engine = Engine(Config(backend="memory"), storage)
        sub = await connect(engine, "sub", 1)
        sub.send(Subscribe(1, [("t", SubscriptionOptions(qos=2))]))
        pub = await connect(engine, "pub", 2)
        await settle()
        sub.received()
        pub.received()
        for dup in (False, True):
            pub.send(Publish("t", b"once", qos=2, packet_id=9, dup=dup))
            await settle()
        assert pub.received() == [Pubrec(9), Pubrec(9)]
        assert [p.payload for p in sub.received()] == [b"once"]
        pub.send(Pubrel(9))
        await settle()
        assert [type(p).__name__ for p in pub.received()] == ["Pubcomp"]

    asyncio.run(scenario())


def test_v5_takeover_sends_disconnect_0x8e_to_old_connection() -> None:
    async def scenario() -> None:
        storage = MemoryStorage()
        await storage.open()
        engine = Engine(Config(backend="memory"), storage)
        first = await connect(engine, "dev", 1, version=5)
        first.received()
        second = await connect(engine, "dev", 2, version=5)
        assert first.transport.closed
        [disconnect] = first.received()
        assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x8E
        [connack] = second.received()
        assert connack.reason_code == 0

    asyncio.run(scenario())


def test_malformed_bytes_close_only_that_connection_with_0x81() -> None:
    async def scenario() -> None:
        storage = MemoryStorage()
        await storage.open()
        engine = Engine(Config(backend="memory"), storage)
        good = await connect(engine, "good", 1, version=5)
        bad = await connect(engine, "bad", 2, version=5)
        good.received()
        bad.received()
        bad.conn.data_received(b"\x30\xff\xff\xff\xff\x01")  # remaining length of five bytes
        [disconnect] = bad.received()
        assert disconnect.reason_code == 0x81
        assert bad.transport.closed and not good.transport.closed

    asyncio.run(scenario())


def test_offline_persistent_session_gets_queue_in_order_with_session_present() -> None:
    async def scenario() -> None:
        storage = MemoryStorage()
        await storage.open()
        engine = Engine(Config(backend="memory"), storage)
        sub = await connect(engine, "dev", 1, version=5, clean=False, props={P.SESSION_EXPIRY_INTERVAL: 600})
        sub.send(Subscribe(1, [("q/#", SubscriptionOptions(qos=2))]))
        await settle()
        sub.send(Disconnect())
        pub = await connect(engine, "pub", 2)
        for i in range(30):
            pub.send(Publish("q/x", str(i).encode(), qos=1 + i % 2, packet_id=i + 1))
        await settle()
        assert engine.sessions["dev"].queued_count == 30
        back = await connect(engine, "dev", 3, version=5, clean=False, props={P.SESSION_EXPIRY_INTERVAL: 600})
        await settle()
        packets = back.received()
        assert packets[0] == Connack(True, 0, {P.RECEIVE_MAXIMUM: 20, P.TOPIC_ALIAS_MAXIMUM: 10, P.MAXIMUM_PACKET_SIZE: Config().max_packet_size})
        publishes = [p for p in packets[1:]]
        # Receive Maximum: only 20 in flight until acknowledged.
        assert [p.payload for p in publishes] == [str(i).encode() for i in range(20)]
        for p in publishes:
            back.send(Puback(p.packet_id) if p.qos == 1 else Pubrec(p.packet_id))
        await settle()
        rest = [p for p in back.received() if isinstance(p, Publish)]
        assert [p.payload for p in rest] == [str(i).encode() for i in range(20, 30)]

    asyncio.run(scenario())
