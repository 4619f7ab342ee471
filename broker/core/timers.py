"""Deadlines by key in one-second slots: housekeeping costs what is due, not what exists.

The tick used to scan every session twice and every connection once, every
0.5 s: 116 ms per tick with 1,000,000 offline sessions (issue 15). Session
expiry, will delays, keepalive checks and stored-message expiry now each keep a
``Timers``: ``schedule`` (or re-schedule) a key, ``due`` pops the keys whose
time has come.

A key's exact deadline is in ``_due``; the key itself is listed in the slot of
the whole second its deadline falls in, and a heap holds the seconds that have a
slot. A key costs a dict entry and a list slot (a heap of (deadline, counter,
key) tuples cost about 90 bytes more per key: per idle connection, per offline
session). A re-scheduled key leaves its old listing behind; such stale listings
are skipped when their second comes, and the slots are rebuilt when they
outnumber the live keys, so a flapping client cannot grow them without bound.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Timers(Generic[K]):
    __slots__ = ("_due", "_slots", "_seconds", "_listed")

    def __init__(self) -> None:
        self._due: dict[K, float] = {}  # the live deadline of each key
        self._slots: dict[int, list[K]] = {}  # whole second -> keys listed there (some may be stale)
        self._seconds: list[int] = []  # heap of the seconds that have a slot
        self._listed = 0  # listings in all slots, stale ones included

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def schedule(self, key: K, when: float) -> None:
        """Set ``key``'s deadline to ``when`` (replacing an earlier or later one)."""
        due = self._due
        old = due.get(key)
        if old == when:
            return
        due[key] = when
        second = math.floor(when)
        if old is not None and math.floor(old) == second:
            return  # listed in that second already
        slot = self._slots.get(second)
        if slot is None:
            self._slots[second] = [key]
            heapq.heappush(self._seconds, second)
        else:
            slot.append(key)
        self._listed += 1
        if self._listed > 2 * len(due) + 1024:
            self._compact()

    def schedule_earlier(self, key: K, when: float) -> None:
        """Set the deadline to ``when`` unless the key is already due sooner."""
        current = self._due.get(key)
        if current is None or when < current:
            self.schedule(key, when)

    def cancel(self, key: K) -> None:
        self._due.pop(key, None)

    def when(self, key: K) -> float | None:
        return self._due.get(key)

    def due(self, now: float) -> list[K]:
        """Pop and return every key whose deadline is at or before ``now``, earliest first."""
        seconds = self._seconds
        slots = self._slots
        live = self._due
        found: list[tuple[float, K]] = []
        while seconds and seconds[0] <= now:
            second = seconds[0]
            slot = slots[second]
            later: list[K] = []  # listed in this second, due after ``now``
            for key in slot:
                when = live.get(key)
                if when is None or math.floor(when) != second:
                    continue  # cancelled, popped already, or moved to another second
                if when <= now:
                    del live[key]
                    found.append((when, key))
                else:
                    later.append(key)
            self._listed -= len(slot) - len(later)
            if later:
                slots[second] = later
                break  # the rest of this second is still to come
            heapq.heappop(seconds)
            del slots[second]
        found.sort(key=_deadline)  # by deadline only (keys are never compared); stable
        return [key for _, key in found]

    def _compact(self) -> None:
        slots: dict[int, list[K]] = {}
        for key, when in self._due.items():
            slots.setdefault(math.floor(when), []).append(key)
        self._slots = slots
        self._seconds = list(slots)
        heapq.heapify(self._seconds)
        self._listed = len(self._due)


def _deadline(item: tuple[float, object]) -> float:
    return item[0]
