"""Is a client reading? Decides when QoS 0 messages to it may be dropped.

A momentarily full buffer is no sign of a dead client: one 200 KB burst fills
1 MiB, and a subscriber reading at full speed lost 9% of its messages (issue 15).
So a client counts as not reading only when its output has stayed above
``SOFT_BYTES`` while nothing drained for ``STALL_SECONDS``; above ``hard_bytes``
it is dropped from anyway, so that memory stays bounded for a client that reads
more slowly than it is sent to. Between the two, the publishers that feed it are held
back (``flow.py``, the one owner of backpressure).
"""

from __future__ import annotations

import time

SOFT_BYTES = 1 << 20  # below this much unsent output, a client is never slow
STALL_SECONDS = 2.0  # no byte drained for this long (above SOFT_BYTES): not reading
HARD_BYTES = 16 << 20  # at least this much unsent output: drop QoS 0 even while it reads


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

