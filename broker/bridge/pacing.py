"""``max_rate``: what goes upstream is paced to at most N PUBLISH per second, in order.

After a day offline a gateway holds a day of readings; sending them as fast as the
upstream acknowledges could flood a cloud service with per-connection limits (AWS IoT
takes 100 publishes per second). A token bucket with a burst of a tenth of a second
holds packets back; acknowledgements and PUBREL wait behind held PUBLISH so that the
order on the wire stays the order the local session chose.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class Pacer:
    """Hands packets to ``write`` at once (rate 0) or at most ``rate`` PUBLISH per second."""

    def __init__(self, rate: int, write: Callable[[list[bytes]], None]) -> None:
        self.rate = rate
        self.write = write
        self.held: deque[tuple[bytes, bool]] = deque()  # (bytes, is a PUBLISH)
        self.held_bytes = 0
        self.tokens = 0.0
        self.tokens_at = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    def send(self, packets: list[tuple[bytes, bool]]) -> None:
        if not packets:
            return
        if not self.rate:
            self.write([data for data, _ in packets])
            return
        for item in packets:
            self.held.append(item)
            self.held_bytes += len(item[0])
        self._release()

    def reset(self) -> None:
        """The connection is gone: what was held is dropped (the local session re-sends it)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.held.clear()
        self.held_bytes = 0
        self.tokens = 0.0
        self.tokens_at = time.monotonic()

    def _release(self) -> None:
        """Send what the rate allows now; come back when the next token is due."""
        self.timer = None
        rate = float(self.rate)
        now = time.monotonic()
        self.tokens = min(max(1.0, rate / 10), self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now
        batch: list[bytes] = []
        held = self.held
        while held:
            data, is_publish = held[0]
            if is_publish:
                if self.tokens < 1:
                    break
                self.tokens -= 1
            held.popleft()
            self.held_bytes -= len(data)
            batch.append(data)
        if batch:
            self.write(batch)
        if held:
            self.timer = asyncio.get_running_loop().call_later((1 - self.tokens) / rate, self._release)
