"""What one housekeeping tick costs with many offline sessions (issue 15 item 10).

    python -m bench.tick_cost --sessions 1000000
    PYTHONPATH=/path/to/old/checkout python -m bench.tick_cost   # the same, for another version

The engine runs in process on the memory backend; the figure is the mean time
of ``Engine.tick`` over 10 ticks during which no session is due.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from broker.config import Config
from broker.core.engine import Engine
from broker.storage.base import SessionRecord
from broker.storage.memory import MemoryStorage


async def measure(sessions: int) -> float:
    storage = MemoryStorage()
    now = time.time()
    for i in range(sessions):
        storage.save_session(SessionRecord(f"dev{i}", 86400, 4, now))
    await storage.commit()
    engine = Engine(Config(backend="memory", sys_interval=0), storage)
    await engine.start()
    started = time.perf_counter()
    for step in range(10):
        engine.tick(now + step)
    took = (time.perf_counter() - started) / 10
    await storage.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    args = parser.parse_args()
    took = asyncio.run(measure(args.sessions))
    print(f"{args.sessions} offline sessions: {took * 1000:.2f} ms per tick")


if __name__ == "__main__":
    main()
