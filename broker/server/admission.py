"""Who may connect: ``[limits] max_connections`` (in all), per source address, and a connect rate.

A device in a reconnect loop, or a host opening sockets by the thousand, must
not take the file descriptors and memory every other client needs. A connection
over a limit is not dropped at once: it is answered at its CONNECT (MQTT 5:
CONNACK 0x9F Connection rate exceeded; 3.1.1: CONNACK 3 Server unavailable) so a
well-behaved client knows to back off, and its reader is kept small meanwhile.
Unix-socket clients have no address and are limited only by the total.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from broker.config import Config

if TYPE_CHECKING:
    from broker.core.connection import Connection

log = logging.getLogger("broker")

# The largest packet read from a connection that will be refused at its CONNECT.
REFUSED_PACKET_SIZE = 64 * 1024


class _Bucket:
    """A token bucket: ``rate`` connects a second, bursts up to ``rate``."""

    __slots__ = ("tokens", "updated")

    def __init__(self, rate: float, now: float) -> None:
        self.tokens = rate
        self.updated = now

    def take(self, rate: float, now: float) -> bool:
        self.tokens = min(rate, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, rate: float, now: float) -> bool:
        return self.tokens + (now - self.updated) * rate >= rate


class Admission:
    """Counts admitted connections by address; ``admit`` says why a new one is refused, or None."""

    __slots__ = ("max_connections", "max_per_address", "rate", "total", "_per_address", "_buckets",
                 "refused", "_logged_at")

    def __init__(self, config: Config) -> None:
        self.refused = 0  # refusals not yet reported in the log
        self._logged_at = -1e9
        self.max_connections = config.max_connections
        self.max_per_address = config.max_connections_per_address
        self.rate = float(config.max_connect_rate)
        self.total = 0
        self._per_address: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, address: str | None, now: float | None = None) -> str | None:
        """Count a new connection from ``address``; or return why it is refused (then it is not counted)."""
        if self.max_connections and self.total >= self.max_connections:
            return f"too many connections ({self.max_connections}, max_connections)"
        if address is not None:
            if self.max_per_address and self._per_address.get(address, 0) >= self.max_per_address:
                return f"too many connections from {address} ({self.max_per_address}, max_connections_per_address)"
            if self.rate:
                now = time.monotonic() if now is None else now
                bucket = self._buckets.get(address)
                if bucket is None:
                    bucket = self._buckets[address] = _Bucket(self.rate, now)
                if not bucket.take(self.rate, now):
                    return f"connecting too often from {address} (max_connect_rate {self.rate:g}/s)"
            self._per_address[address] = self._per_address.get(address, 0) + 1
        self.total += 1
        return None

    def admit_connection(self, connection: Connection, peername: Any) -> str | None:
        """A listener's new ``connection`` from ``peername`` (asyncio's extra info): the address
        it counts under ("" for none; hand it to ``release`` when it closes), or None if it is
        over a limit: then it is refused at its CONNECT, and nothing larger than a CONNECT is
        read from it meanwhile."""
        # Interned: the connections from one address (devices behind a NAT) share one string.
        address = sys.intern(str(peername[0])) if isinstance(peername, tuple) and peername else None
        why = self.admit(address)
        if why is None:
            return address or ""
        connection.refusal = why
        connection.reader.max_packet_size = min(connection.reader.max_packet_size, REFUSED_PACKET_SIZE)
        line = self.report(why)
        if line is not None:
            log.info("%s", line)
        return None

    def report(self, why: str, now: float | None = None) -> str | None:
        """A log line for a refusal, at most one a second (an attack must not flood the log)."""
        self.refused += 1
        now = time.monotonic() if now is None else now
        if now - self._logged_at < 1.0:
            return None
        self._logged_at = now
        count, self.refused = self.refused, 0
        return f"refusing a connection: {why}" + (f" ({count - 1} more refused since the last report)" if count > 1 else "")

    def release(self, address: str | None) -> None:
        """An admitted connection is gone."""
        self.total -= 1
        if address is not None:
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]

    def prune(self, now: float | None = None) -> None:
        """Forget full buckets (called from housekeeping), so the table holds only recent addresses."""
        now = time.monotonic() if now is None else now
        rate = self.rate
        for address in [a for a, b in self._buckets.items() if b.full(rate, now)]:
            del self._buckets[address]

    def __len__(self) -> int:
        """Addresses with state (for tests: the tables do not grow without bound)."""
        return len(self._per_address.keys() | self._buckets.keys())
