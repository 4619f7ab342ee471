"""Is a client reading? Decides when QoS 0 messages to it may be dropped.

A momentarily full buffer is no sign of a dead client: one 200 KB burst fills
1 MiB, and a subscriber reading at full speed lost 9% of its messages (issue 15).
So a client counts as not reading only when its output has stayed above
``SOFT_BYTES`` while nothing drained for ``STALL_SECONDS``; above ``hard_bytes``
it is dropped from anyway, so that memory stays bounded for a client that reads
more slowly than it is sent to.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.core.connection import Connection

SOFT_BYTES = 1 << 20  # below this much unsent output, a client is never slow
STALL_SECONDS = 2.0  # no byte drained for this long (above SOFT_BYTES): not reading
HARD_BYTES = 16 << 20  # at least this much unsent output: drop QoS 0 even while it reads
RECHECK_SECONDS = 0.5  # a paused publisher looks at the subscribers it waits for this often


class OutputMeter:
    """Compares the bytes handed to the transport with those still buffered, to see progress.

    A connection makes one the first time its output is above SOFT_BYTES (most never get
    there) and counts the bytes it writes itself.
    """

    __slots__ = ("hard_bytes", "_last_sent", "_progress_at")

    def __init__(self, max_packet_size: int) -> None:
        self.hard_bytes = max(HARD_BYTES, 2 * max_packet_size)  # one packet in flight is no reason
        self._last_sent = 0
        self._progress_at = time.monotonic()

    def not_reading(self, buffered: int, written: int) -> bool:
        """True if QoS 0 to this client should be dropped, given its unsent bytes now and the
        bytes handed to its transport so far."""
        if buffered <= SOFT_BYTES:
            return False
        now = time.monotonic()
        sent = written - buffered
        if sent > self._last_sent:
            self._last_sent = sent
            self._progress_at = now
        return buffered >= self.hard_bytes or now - self._progress_at > STALL_SECONDS


class Congestion:
    """Back-pressure: a publisher whose QoS 0 messages land on a subscriber that reads, but more
    slowly than they come, stops being read until that subscriber's output is below SOFT_BYTES.

    Without it the choice is to buffer without bound (mosquitto held 114 MB for one fast
    burst) or to drop messages a healthy subscriber would have read. A subscriber that stops
    reading altogether is not waited for: after STALL_SECONDS its QoS 0 messages are dropped
    and the publishers it held go on.
    """

    __slots__ = ("hit", "_waiters", "_blockers", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.hit: list[Connection] = []  # congested subscribers met while routing one PUBLISH
        self._waiters: dict[Connection, set[Connection]] = {}  # subscriber -> publishers paused for it
        self._blockers: dict[Connection, set[Connection]] = {}  # publisher -> subscribers it waits for
        self._loop = loop

    def throttle(self, publisher: Connection) -> None:
        """After routing ``publisher``'s PUBLISH: pause it if it filled a congested subscriber."""
        subscribers = set(self.hit)
        self.hit.clear()
        subscribers.discard(publisher)  # never wait for oneself
        if not subscribers:
            return
        paused_now = publisher not in self._blockers
        self._blockers.setdefault(publisher, set()).update(subscribers)
        for subscriber in subscribers:
            self._waiters.setdefault(subscriber, set()).add(publisher)
        if paused_now:
            publisher.throttle_input(True)
            self._loop.call_later(RECHECK_SECONDS, self._recheck, publisher)

    def drained(self, subscriber: Connection) -> None:
        """``subscriber`` is below SOFT_BYTES, stalled or gone: resume who waited only for it."""
        for publisher in self._waiters.pop(subscriber, ()):
            blockers = self._blockers.get(publisher)
            if blockers is None:
                continue
            blockers.discard(subscriber)
            if not blockers:
                del self._blockers[publisher]
                publisher.throttle_input(False)

    def forget(self, conn: Connection) -> None:
        """A connection closed: as a subscriber it holds no one, as a publisher it waits for no one."""
        self.drained(conn)
        for subscriber in self._blockers.pop(conn, ()):
            waiters = self._waiters.get(subscriber)
            if waiters is not None:
                waiters.discard(conn)
                if not waiters:
                    del self._waiters[subscriber]

    def _recheck(self, publisher: Connection) -> None:
        blockers = self._blockers.get(publisher)
        if not blockers:
            return
        for subscriber in list(blockers):
            buffered = subscriber.transport.write_buffer_size()
            if buffered <= SOFT_BYTES or subscriber.not_reading(buffered):
                self.drained(subscriber)
        if publisher in self._blockers:
            self._loop.call_later(RECHECK_SECONDS, self._recheck, publisher)

    def __len__(self) -> int:
        """Paused publishers (for tests)."""
        return len(self._blockers)
