"""Two devices sharing a client id take the session from each other in a loop: spot it, say so once.

A very common misconfiguration (two devices flashed with the same id) turns into
a takeover every few milliseconds. The broker logs the fight once per client id,
with both addresses, instead of two lines per takeover, and with
``[limits] max_takeovers_per_minute`` refuses a client id that flaps beyond it
(as EMQX's flapping detection does) until a minute has passed.
"""

from __future__ import annotations

import time

WINDOW_SECONDS = 60.0
FIGHT_TAKEOVERS = 3  # takeovers within the window that make a fight worth a warning


class _Record:
    __slots__ = ("window_start", "count", "reported", "peers")

    def __init__(self, now: float) -> None:
        self.window_start = now
        self.count = 0
        self.reported = False
        self.peers: set[str] = set()


class TakeoverWatch:
    """Counts takeovers per client id over a fixed one-minute window."""

    __slots__ = ("limit", "_records")

    def __init__(self, max_per_minute: int) -> None:
        self.limit = max_per_minute  # 0 = never refuse
        self._records: dict[str, _Record] = {}

    def _record(self, client_id: str, now: float) -> _Record:
        record = self._records.get(client_id)
        if record is None or now - record.window_start >= WINDOW_SECONDS:
            if len(self._records) > 10_000:
                self.prune(now)
            record = self._records[client_id] = _Record(now)
        return record

    def refused(self, client_id: str, now: float | None = None) -> bool:
        """True if a new connection with this id must be refused: it flapped over the limit."""
        if not self.limit:
            return False
        record = self._records.get(client_id)
        now = time.monotonic() if now is None else now
        return record is not None and now - record.window_start < WINDOW_SECONDS and record.count >= self.limit

    def taken_over(self, client_id: str, old_peer: str, new_peer: str, now: float | None = None) -> str | None:
        """Count one takeover. Returns the line to log: the usual one for the first takeovers of a
        minute, then the fight's (once a minute at most), then None while the fight goes on."""
        now = time.monotonic() if now is None else now
        record = self._record(client_id, now)
        record.count += 1
        if len(record.peers) < 8:
            record.peers.update((old_peer, new_peer))
        if record.count < FIGHT_TAKEOVERS:
            return f"client {client_id} already connected, closing old connection"
        if record.count >= FIGHT_TAKEOVERS and not record.reported:
            record.reported = True
            return (
                f"client id {client_id} is used by more than one client: {old_peer} and {new_peer} take the"
                f" session from each other ({record.count} takeovers in {now - record.window_start:.0f} s)."
                " Further takeovers of this id are not logged for a minute"
                + (f"; past {self.limit} a minute it is refused (max_takeovers_per_minute)" if self.limit else "")
            )
        return None

    def prune(self, now: float | None = None) -> None:
        """Forget ids whose window has passed (housekeeping)."""
        now = time.monotonic() if now is None else now
        for client_id in [c for c, r in self._records.items() if now - r.window_start >= WINDOW_SECONDS]:
            del self._records[client_id]

    def __len__(self) -> int:
        return len(self._records)
