"""Issue 15 item 10: housekeeping costs what is due, not what exists.

The tick scanned every session (twice) and every connection twice a second:
116 ms per tick with 1,000,000 offline sessions.
"""

from __future__ import annotations

import asyncio
import time

from broker.config import Config
from broker.core import session as session_module
from broker.core.engine import Engine
from broker.core.timers import Timers
from broker.storage.base import SessionRecord
from broker.storage.memory import MemoryStorage


def test_timers_pop_what_is_due_in_order_and_skip_stale_entries() -> None:
    timers: Timers[str] = Timers()
    timers.schedule("a", 5.0)
    timers.schedule("b", 3.0)
    timers.schedule("c", 9.0)
    timers.schedule("a", 7.0)  # moved later: its old entry is stale
    timers.schedule_earlier("c", 10.0)  # not earlier: unchanged
    timers.cancel("b")
    assert timers.due(6.0) == []
    assert timers.due(9.0) == ["a", "c"]
    assert len(timers) == 0 and timers.due(100.0) == []


def test_a_flapping_key_does_not_grow_the_heap() -> None:
    timers: Timers[str] = Timers()
    for i in range(100_000):
        timers.schedule("flapper", float(i))
    assert len(timers._heap) <= 2 * len(timers) + 1025


def test_a_tick_does_not_look_at_sessions_that_are_not_due(monkeypatch) -> None:
    count = 60_000
    looked_at = [0]
    original = session_module.Session.expired

    def counting(self, now: float) -> bool:
        looked_at[0] += 1
        return original(self, now)

    monkeypatch.setattr(session_module.Session, "expired", counting)

    async def run() -> None:
        storage = MemoryStorage()
        now = time.time()
        for i in range(count):
            storage.save_session(SessionRecord(f"dev{i}", 3600 + i % 60, 4, now))
        await storage.commit()
        engine = Engine(Config(backend="memory", sys_interval=0), storage)
        await engine.start()
        assert len(engine.sessions) == count
        looked_at[0] = 0
        for step in range(10):
            engine.tick(now + step)
        assert looked_at[0] == 0, f"{looked_at[0]} sessions looked at by 10 ticks with none due"
        engine.tick(now + 3629.5)
        assert looked_at[0] == count // 2 and len(engine.sessions) == count // 2  # expiries 3600..3629
        engine.tick(now + 3700)
        assert len(engine.sessions) == 0
        await storage.close()

    asyncio.run(run())
