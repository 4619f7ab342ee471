"""Keepalive and CONNECT deadlines in the core, on a fake monotonic clock (no sockets, no sleeps).

A client that goes silent is closed once 1.5 × its keepalive has passed since it was last
heard (MQTT-3.1.2-24), whether that comes before or after the CONNECT deadline
(``connect_timeout``, which the keepalive replaces once CONNECT is accepted).
"""

from __future__ import annotations

import asyncio

import pytest

from broker.config import Config
from broker.core import connection as connection_module
from broker.core import engine as engine_module
from broker.core.connection import Connection
from broker.core.engine import Engine
from broker.core.states import CLOSED
from broker.protocol.codec import encode
from broker.protocol.packets import Connect, Pingreq
from broker.storage.memory import MemoryStorage
from coretransport import FakeTransport

CONNECT_TIMEOUT = 10


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("keepalive", "pings_at", "open_until", "closed_by"),
    [
        (2, [], 2.9, 3.1),  # due before the CONNECT deadline
        (20, [], 29.9, 30.1),  # due after it: still enforced, not at the CONNECT deadline
        (20, [25.0], 54.9, 55.1),  # heard at 25 s: 25 + 30
        (100, [11.0, 140.0], 289.9, 290.1),
    ],
)
def test_silent_client_closed_at_one_and_a_half_keepalive(
    monkeypatch: pytest.MonkeyPatch, keepalive: int, pings_at: list[float], open_until: float, closed_by: float
) -> None:
    clock = Clock()
    start = clock.now
    monkeypatch.setattr(connection_module.time, "monotonic", clock)
    monkeypatch.setattr(engine_module.time, "monotonic", clock)

    async def scenario() -> None:
        storage = MemoryStorage()
        await storage.open()
        engine = Engine(Config(backend="memory", connect_timeout=CONNECT_TIMEOUT, sys_interval=0), storage)
        await engine.start()
        conn = Connection(engine, FakeTransport())
        conn.data_received(encode(Connect("sleepy", keepalive=keepalive), 4))
        pings = list(pings_at)
        # The housekeeping tick every half second, as server/app.py runs it.
        while clock.now - start < open_until:
            clock.now += 0.5
            if pings and clock.now - start >= pings[0]:
                pings.pop(0)
                conn.data_received(encode(Pingreq(), 4))
            engine.tick(0.0)
            assert conn.state != CLOSED, f"closed at {clock.now - start:.1f} s"
        while clock.now - start < closed_by:
            clock.now += 0.1
            engine.tick(0.0)
        assert conn.state == CLOSED and conn.close_reason == "keepalive timeout"
        await engine.shutdown()

    asyncio.run(scenario())
