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


def test_deadlines_within_a_second_and_keys_that_come_back() -> None:
    timers: Timers[str] = Timers()
    timers.schedule("late", 10.9)
    timers.schedule("early", 10.2)
    timers.schedule("back", 10.5)
    timers.schedule("back", 12.0)  # to another second...
    timers.schedule("back", 10.4)  # ...and back: listed twice in second 10, due once
    timers.schedule("gone", 10.1)
    timers.cancel("gone")
    assert timers.due(10.0) == []
    assert timers.due(10.45) == ["early", "back"]
    assert timers.due(10.8) == []
    assert timers.when("late") == 10.9 and "late" in timers and len(timers) == 1
    assert timers.due(11.0) == ["late"]
    assert timers.due(13.0) == [] and len(timers) == 0


def test_due_agrees_with_a_sorted_list_of_deadlines() -> None:
    import random

    rng = random.Random(7)
    timers: Timers[int] = Timers()
    deadlines: dict[int, float] = {}
    now = 0.0
    for _ in range(20_000):
        key = rng.randrange(300)
        action = rng.random()
        if action < 0.6:
            when = now + rng.random() * 5
            timers.schedule(key, when)
            deadlines[key] = when
        elif action < 0.7:
            timers.cancel(key)
            deadlines.pop(key, None)
        else:
            now += rng.random() * 0.7
            expected = sorted((when, key) for key, when in deadlines.items() if when <= now)
            assert timers.due(now) == [key for _, key in expected]
            for _, key in expected:
                del deadlines[key]
        assert len(timers) == len(deadlines)


def test_a_flapping_key_does_not_grow_the_slots() -> None:
    timers: Timers[str] = Timers()
    for i in range(100_000):
        timers.schedule("flapper", float(i))
    assert timers._listed <= 2 * len(timers) + 1025
    assert len(timers._seconds) <= 2 * len(timers) + 1025
    assert timers.due(1e9) == ["flapper"]


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
