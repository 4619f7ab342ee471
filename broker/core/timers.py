"""Deadlines by key in a heap: housekeeping costs what is due, not what exists.

The tick used to scan every session twice and every connection once, every
0.5 s: 116 ms per tick with 1,000,000 offline sessions (issue 15). Session
expiry, will delays, keepalive checks and stored-message expiry now each keep a
``Timers``: ``schedule`` (or re-schedule) a key, ``due`` pops the keys whose
time has come. A re-scheduled key leaves its old entry behind in the heap; such
stale entries are skipped when they surface, and the heap is rebuilt when they
outnumber the live ones, so a flapping client cannot grow it without bound.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Timers(Generic[K]):
    __slots__ = ("_due", "_heap", "_order")

    def __init__(self) -> None:
        self._due: dict[K, float] = {}  # the live deadline of each key
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()  # ties: first scheduled first; keys are never compared

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def schedule(self, key: K, when: float) -> None:
        """Set ``key``'s deadline to ``when`` (replacing an earlier or later one)."""
        if self._due.get(key) == when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._order), key))
        if len(self._heap) > 2 * len(self._due) + 1024:
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
        heap = self._heap
        live = self._due
        found: list[K] = []
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            if live.get(key) == when:
                del live[key]
                found.append(key)
        return found

    def _compact(self) -> None:
        self._heap = [(when, next(self._order), key) for key, when in self._due.items()]
        heapq.heapify(self._heap)
