"""The core while a CONNECT is being authenticated: nothing else is handled, then all of it, in order.

Sans-I/O: a fake transport records what the broker writes, and a backend whose answer
the test releases stands in for a slow password check.
"""

from __future__ import annotations

import asyncio

from broker.auth.access import AccessControl
from broker.auth.base import ACCEPTED, BAD_CREDENTIALS, AuthResult, Client, Credentials
from broker.config import Config
from broker.core.connection import Connection
from broker.core.engine import Engine
from broker.protocol.codec import PacketReader, encode
from broker.protocol.packets import Connack, Connect, Publish, Suback, Subscribe, SubscriptionOptions
from broker.storage.memory import MemoryStorage
from coretransport import FakeTransport


class GatedBackend:
    """Accepts user "u" with password "p" once the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.asked = 0

    @property
    def authorizes_topics(self) -> bool:
        return False

    async def authenticate(self, credentials: Credentials) -> AuthResult:
        self.asked += 1
        await self.gate.wait()
        if credentials.username == "u" and credentials.password == b"p":
            return AuthResult(ACCEPTED, "u")
        return AuthResult(BAD_CREDENTIALS, reason="wrong password")

    def authorize(self, client: Client, action: int, topic: str) -> bool:
        return True

    def reload(self) -> str:
        return "gated"

    def close(self) -> None:
        pass


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def make_engine() -> tuple[Engine, GatedBackend]:
    storage = MemoryStorage()
    await storage.open()
    engine = Engine(Config(backend="memory"), storage)
    await engine.start()
    backend = GatedBackend()
    engine.auth = AccessControl(backend)
    return engine, backend


def received(transport: FakeTransport, version: int = 5) -> list[object]:
    data = bytes(transport.written)
    transport.written.clear()
    return PacketReader(client_side=True, version=version).feed(data) if data else []


def test_packets_behind_connect_wait_for_the_decision_then_run_in_order() -> None:
    async def scenario() -> None:
        engine, backend = await make_engine()
        transport = FakeTransport()
        conn = Connection(engine, transport)
        pipelined = (
            encode(Connect("c", protocol_level=5, username="u", password=b"p"), 5)
            + encode(Subscribe(1, [("t", SubscriptionOptions(qos=0))]), 5)
            + encode(Publish("t", b"one"), 5)
        )
        conn.data_received(pipelined[:-3])  # the last PUBLISH arrives split over two reads
        await settle()
        assert backend.asked == 1 and transport.paused
        assert received(transport) == []  # nothing answered, nothing routed yet
        conn.data_received(pipelined[-3:])
        await settle()
        assert received(transport) == []
        backend.gate.set()
        await settle()
        packets = received(transport)
        assert [type(p) for p in packets] == [Connack, Suback, Publish]
        assert packets[0].reason_code == 0 and packets[2].payload == b"one"
        assert not transport.paused

    asyncio.run(scenario())


def test_refused_connect_drops_what_was_held() -> None:
    async def scenario() -> None:
        engine, backend = await make_engine()
        watcher_transport = FakeTransport()
        watcher = Connection(engine, watcher_transport)
        watcher.data_received(encode(Connect("w", protocol_level=5), 5) + encode(Subscribe(1, [("t", SubscriptionOptions())]), 5))
        await settle()
        received(watcher_transport)
        transport = FakeTransport()
        conn = Connection(engine, transport)
        conn.data_received(encode(Connect("c", protocol_level=5, username="u", password=b"bad"), 5) + encode(Publish("t", b"x"), 5))
        backend.gate.set()
        await settle()
        [connack] = received(transport)
        assert connack.reason_code == 0x86 and transport.closed
        assert received(watcher_transport) == []
        assert "c" not in engine.sessions

    asyncio.run(scenario())


def test_connection_lost_while_authenticating() -> None:
    async def scenario() -> None:
        engine, backend = await make_engine()
        transport = FakeTransport()
        conn = Connection(engine, transport)
        conn.data_received(encode(Connect("c", protocol_level=4, username="u", password=b"p"), 4))
        await settle()
        conn.connection_lost(None)
        backend.gate.set()
        await settle()
        assert transport.written == b"" and "c" not in engine.sessions and conn not in engine.connections

    asyncio.run(scenario())
