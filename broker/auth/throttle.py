"""Failed logins slow down further attempts from the same address.

After n counted failures for a key its next attempt waits ``base * 2**(n-1)``
seconds (at most ``cap``) after the previous one, concurrent attempts included:
each takes the next free slot, so opening many connections at once does not
multiply the guesses per second. The first ``free`` failures are not counted.
Failures are forgotten ``forget_after`` seconds after the last one. A success does
not reset the count: a valid account must not let its holder guess another
account's password at full speed.

``AccessControl`` keeps two: one per address and user name (every failure counts:
guessing one user's password), and one per address that starts counting after
some failures (trying many user names), so that one device stuck with a wrong
password does not hold up the other devices behind the same NAT address.
"""

from __future__ import annotations

import time


class _Entry:
    __slots__ = ("failures", "next_slot", "last_failure")

    def __init__(self) -> None:
        self.failures = 0
        self.next_slot = 0.0
        self.last_failure = 0.0


class LoginThrottle:
    def __init__(
        self, base: float = 0.5, cap: float = 30.0, forget_after: float = 600.0, max_addresses: int = 10_000, free: int = 0
    ):
        self.base = base
        self.cap = cap
        self.free = free
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._entries: dict[str, _Entry] = {}

    def _backoff(self, failures: int) -> float:
        counted = failures - self.free
        return min(self.cap, self.base * 2 ** (counted - 1)) if counted > 0 else 0.0

    def _entry(self, address: str, now: float) -> _Entry | None:
        entry = self._entries.get(address)
        if entry is not None and now - entry.last_failure > self.forget_after:
            del self._entries[address]
            return None
        return entry

    def reserve(self, address: str, now: float | None = None) -> float:
        """Seconds this attempt must wait before its credentials are checked (0: none)."""
        now = time.monotonic() if now is None else now
        entry = self._entry(address, now)
        if entry is None or entry.failures <= self.free:
            return 0.0
        slot = max(now, entry.next_slot)
        entry.next_slot = slot + self._backoff(entry.failures)
        return slot - now

    def failed(self, address: str, now: float | None = None) -> int:
        """Count a failure; returns how many there have been recently."""
        now = time.monotonic() if now is None else now
        entry = self._entry(address, now)
        if entry is None:
            if len(self._entries) >= self.max_addresses:
                self._prune(now)
            entry = self._entries[address] = _Entry()
        entry.failures += 1
        entry.last_failure = now
        entry.next_slot = max(entry.next_slot, now + self._backoff(entry.failures))
        return entry.failures

    def _prune(self, now: float) -> None:
        for address in [a for a, e in self._entries.items() if now - e.last_failure > self.forget_after]:
            del self._entries[address]
        if len(self._entries) >= self.max_addresses:  # still full: forget the oldest half
            oldest = sorted(self._entries, key=lambda a: self._entries[a].last_failure)
            for address in oldest[: len(oldest) // 2]:
                del self._entries[address]


def address_of(peer: str) -> str:
    """The host part of ``host:port`` / ``[v6]:port``; other peers (unix:...) as they are."""
    if peer.startswith("["):
        return peer[1 : peer.find("]")] if "]" in peer else peer
    if peer.count(":") == 1 and not peer.startswith("unix:"):
        return peer.rsplit(":", 1)[0]
    return peer
