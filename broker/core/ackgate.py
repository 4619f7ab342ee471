"""When a QoS 1 PUBLISH may be acknowledged: at the commit that makes it durable, or
earlier, once every stored copy of it has been acknowledged by its subscriber.

A PUBACK promises the publisher that the message will arrive. A copy queued for a
persistent session is kept by that promise only until its subscriber acknowledges it:
after that PUBACK the copy is delivered, and whether its row ever reached the disk no
longer matters (a crash can at most deliver it again, which QoS 1 allows). So a
message whose every stored copy is acknowledged before its group commit completes
needs no commit for its own PUBACK, and the publisher's in-flight window refills at
the pace of the subscribers instead of the pace of fsync.

A copy that is held in storage only (the session is offline, spilled or loading) can
be released only by the commit: it holds the gate for good (``pin``).

The commit a gate waits for starts after a short grace (``Engine.commit``, ``urgent``
False) when nothing else waits for it: a subscriber on the same machine or network
acknowledges within it, the copy's row and its delete cancel out in the write buffer,
and a message that went straight through never touches the disk (an SD card's fsync
takes milliseconds, and wears it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class AckGate:
    """The release of one QoS 1 acknowledgement (see the module docstring)."""

    __slots__ = ("copies", "pinned", "released", "commit", "on_release")

    def __init__(self) -> None:
        self.copies = 0  # stored copies not yet acknowledged (a pin counts as one forever)
        self.pinned = False  # a copy only the commit can clear: no reason to let it wait
        self.released = False
        self.commit: asyncio.Future[None] | None = None  # set once the acknowledgement waits
        self.on_release: Callable[[], None] | None = None

    def add_copy(self) -> None:
        """A copy was stored and will be sent now: its acknowledgement counts."""
        self.copies += 1

    def pin(self) -> None:
        """A copy was stored that no acknowledgement will clear soon: wait for the commit."""
        self.copies += 1
        self.pinned = True

    def copy_acknowledged(self) -> None:
        self.copies -= 1
        if self.copies == 0 and not self.released:
            self.released = True
            callback = self.on_release
            if callback is not None:
                self.on_release = None
                callback()

    def done(self) -> bool:
        """Released, or its commit is over (successfully or not: the caller looks)."""
        if self.released:
            return True
        commit = self.commit
        return commit is None or commit.done()
