"""Backpressure: read no faster from publishers than subscribers take, within a memory budget.

Why: acknowledging a QoS 1 message and then dropping it because a subscriber's queue
overflowed loses an acknowledged message (issue 13). Instead, when an online session's
queue passes its high-water mark (3/4 of ``max_queued_messages`` / ``max_queued_bytes``),
the connections whose PUBLISHes fed it are *held*: their further PUBLISH packets wait,
unhandled and unacknowledged, until the queue is back under the low-water mark (1/2).
A QoS 1/2 publisher then stops by itself once its in-flight window is full (for MQTT 5:
the Receive Maximum we advertise); any other one is stopped by pausing its socket once
its waiting packets pass ``HELD_BYTES_LIMIT``. Acknowledgements and PINGREQ from a held
connection are still handled, so a client that publishes and subscribes is never stuck
behind itself. Only publishers that feed a slow queue wait; the others are not touched.

A subscriber that acknowledges nothing for ``stalled_subscriber_timeout`` seconds while
its publishers wait has stopped reading: they are let go, and its queue limits drop what
does not fit, counted by reason (``Engine.drop``).

QoS 0 has no queue to watch: a subscriber that reads, but more slowly than QoS 0 comes to
it, shows as unsent output. Past ``SOFT_BYTES`` of it (``slow_consumer.py``) the publishers
that feed it are held the same way, until its output is back under ``SOFT_BYTES``; one that
has stopped reading is not waited for (its QoS 0 messages are dropped instead).

The memory budget (``max_memory``) holds every publisher while the resident size is
near it (within 1/8), and lets them go once it is 1/4 under (see ``check_memory``).

This module is the one owner of who is held and why: each reason is a ``Hold``, and a
connection is read again once no hold and no full memory budget keeps it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from broker.config import AUTO_MEMORY, Config
from broker.core.slow_consumer import SOFT_BYTES

if TYPE_CHECKING:
    from broker.core.session import Session
    from broker.core.transport import Transport

log = logging.getLogger("broker")

# Backpressure marks when the queue has no count limit (max_queued_messages = 0).
DEFAULT_QUEUE_MARK = 1000
# Bytes of PUBLISH packets a held connection may have waiting before its socket is paused.
HELD_BYTES_LIMIT = 64 * 1024
# Without /proc/meminfo, the "auto" budget.
FALLBACK_MEMORY = 256 * 1024 * 1024
# Input bytes between two looks at the resident size (and at every housekeeping tick).
MEMORY_CHECK_BYTES = 256 * 1024
# Seconds between two heap trims (or, without glibc, counts of the bytes held).
TRIM_INTERVAL = 0.1
# What one queue entry costs in RAM besides its payload (entry, message, list slots).
ENTRY_OVERHEAD = 200

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Feeder(Protocol):
    """A connection whose PUBLISHes can be held back (``core/connection.py``)."""

    def hold(self, reason: Hold) -> None:
        """Handle no more PUBLISH until ``release(reason)``."""

    def release(self, reason: Hold) -> None: ...

    def wake(self) -> None:
        """The memory budget has room again."""


class SlowReader(Protocol):
    """A subscriber's connection, as far as its unsent QoS 0 output is concerned."""

    transport: Transport

    def not_reading(self, buffered: int) -> bool:
        """Whether it stopped reading, with ``buffered`` bytes unsent (``slow_consumer.py``)."""
        ...


def machine_memory() -> int:
    """MemTotal from /proc/meminfo in bytes, or 0 when it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_budget(config: Config) -> int:
    """The budget in bytes (0 = none): ``max_memory``, or a quarter of the machine's RAM."""
    if config.max_memory != AUTO_MEMORY:
        return config.max_memory
    total = machine_memory()
    return total // 4 if total else FALLBACK_MEMORY


def resident_bytes() -> int:
    """This process's resident set size (0 when /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (gives free heap pages back to the system), or None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def marks(max_messages: int, max_bytes: int) -> tuple[int, int, int, int]:
    """High- and low-water marks (messages, bytes) of a queue with these limits (0 = none)."""
    limit = max_messages or DEFAULT_QUEUE_MARK
    no_limit = 1 << 62
    return (
        max(1, limit * 3 // 4),
        max_bytes * 3 // 4 if max_bytes else no_limit,
        limit // 2,
        max_bytes // 2 if max_bytes else no_limit,
    )


class Hold:
    """Why feeders wait: a session's queue over its high-water mark, or a subscriber's unsent
    QoS 0 output over SOFT_BYTES; and the feeders it holds."""

    __slots__ = ("feeders", "acks", "since")

    def __init__(self, acks: int = 0, since: float = 0.0) -> None:
        self.feeders: set[Feeder] = set()
        self.acks = acks  # a queue's session: its acknowledgement count when last seen
        self.since = since  # monotonic time of the last acknowledgement seen

    def add(self, feeder: Feeder) -> None:
        if feeder not in self.feeders:
            self.feeders.add(feeder)
            feeder.hold(self)

    def release_all(self) -> None:
        for feeder in self.feeders:
            feeder.release(self)


class FlowControl:
    __slots__ = (
        "config",
        "high_messages",
        "low_messages",
        "high_bytes",
        "low_bytes",
        "stall_timeout",
        "feeder",
        "congested",
        "slow_outputs",
        "budget",
        "pause_at",
        "resume_at",
        "margin",
        "memory_full",
        "waiting",
        "bytes_in",
        "next_check",
        "held_bytes",
        "read_resident",
        "floor",
        "next_trim",
        "trim",
    )

    def __init__(self, config: Config, held_bytes: Callable[[], int]) -> None:
        self.config = config
        self.high_messages, self.high_bytes, self.low_messages, self.low_bytes = marks(
            config.max_queued_messages, config.max_queued_bytes
        )
        self.stall_timeout = config.stalled_subscriber_timeout
        # The connection whose PUBLISH is being routed (set by the PUBLISH handler).
        self.feeder: Feeder | None = None
        self.congested: dict[Session, Hold] = {}  # queues over their high-water mark
        self.slow_outputs: dict[SlowReader, Hold] = {}  # subscribers behind on QoS 0
        # ---- memory budget
        self.budget = memory_budget(config)
        self.margin = self.budget // 8
        self.pause_at = self.budget - self.margin
        self.resume_at = self.budget - 2 * self.margin
        self.memory_full = False
        self.waiting: set[Feeder] = set()  # connections with PUBLISHes waiting
        self.bytes_in = 0
        self.next_check = MEMORY_CHECK_BYTES
        self.held_bytes = held_bytes  # bytes of messages the broker holds in RAM now
        self.read_resident = resident_bytes
        self.floor = self.read_resident()  # what the broker takes without messages (see below)
        self.next_trim = 0.0
        self.trim = malloc_trim()

    # ---- queues --------------------------------------------------------------------------
    def over_high_water(self, session: Session) -> bool:
        limits = session.limits
        if limits is not self.config:  # a session with its own limits (a bridge's backlog)
            high_messages, high_bytes, _, _ = marks(limits.max_queued_messages, limits.max_queued_bytes)
            return session.queued_count >= high_messages or session.queued_bytes >= high_bytes
        return session.queued_count >= self.high_messages or session.queued_bytes >= self.high_bytes

    def under_low_water(self, session: Session) -> bool:
        limits = session.limits
        if limits is not self.config:
            _, _, low_messages, low_bytes = marks(limits.max_queued_messages, limits.max_queued_bytes)
            return session.queued_count <= low_messages and session.queued_bytes <= low_bytes
        return session.queued_count <= self.low_messages and session.queued_bytes <= self.low_bytes

    def can_hold(self, session: Session) -> bool:
        """Whether the message being routed comes from a publisher that ``queue_grew`` holds."""
        feeder = self.feeder
        return feeder is not None and feeder is not session.connection

    def queue_grew(self, session: Session) -> None:
        """``session`` (online, not stalled) is over its high-water mark: hold who fed it."""
        feeder = self.feeder
        if feeder is None or feeder is session.connection:
            return  # a client is never held back by its own queue (it could not acknowledge)
        hold = self.congested.get(session)
        if hold is None:
            hold = self.congested[session] = Hold(session.acks, time.monotonic())
        hold.add(feeder)

    def queue_drained(self, session: Session) -> None:
        """``session`` is back under its low-water mark, stalled or offline: let its feeders go."""
        hold = self.congested.pop(session, None)
        if hold is not None:
            hold.release_all()

    # ---- QoS 0 output ---------------------------------------------------------------------
    def output_grew(self, subscriber: SlowReader) -> None:
        """``subscriber`` reads, but has more than SOFT_BYTES unsent: hold who feeds it now."""
        feeder = self.feeder
        if feeder is None or feeder is subscriber:
            return  # nobody to hold (a retained or queued message), or the client itself
        hold = self.slow_outputs.get(subscriber)
        if hold is None:
            hold = self.slow_outputs[subscriber] = Hold()
        hold.add(feeder)

    def output_drained(self, subscriber: SlowReader) -> None:
        """``subscriber``'s output is under SOFT_BYTES, it stopped reading, or it is gone."""
        hold = self.slow_outputs.pop(subscriber, None)
        if hold is not None:
            hold.release_all()

    def forget(self, feeder: Feeder, holds: set[Hold]) -> None:
        """A held connection closed."""
        self.waiting.discard(feeder)
        for hold in holds:
            hold.feeders.discard(feeder)

    def check_stalls(self, now: float) -> None:
        """Housekeeping: a congested session that acknowledged nothing for the timeout stalls;
        a subscriber behind on QoS 0 that drained, or stopped reading, lets its feeders go."""
        for subscriber in list(self.slow_outputs):
            buffered = subscriber.transport.write_buffer_size()
            if buffered <= SOFT_BYTES or subscriber.not_reading(buffered):
                self.output_drained(subscriber)
        for session, hold in list(self.congested.items()):
            if session.acks != hold.acks:
                hold.acks = session.acks
                hold.since = now
            elif now - hold.since >= self.stall_timeout:
                log.warning(
                    "Outgoing messages are being dropped for client %s: it acknowledged nothing for %d s "
                    "with %d messages queued; its publishers are no longer held back.",
                    session.client_id, self.stall_timeout, session.queued_count,
                )
                session.stalled = True
                self.queue_drained(session)

    # ---- memory budget ---------------------------------------------------------------------
    # The resident size is what the budget is about, but memory the broker freed stays in the
    # process (glibc keeps freed heap for reuse), so before holding publishers, and before
    # deciding there is still no room, the free heap is given back (``malloc_trim``) and the
    # resident size read again. Without glibc, room is judged by ``floor + held``: ``held`` is
    # what messages take now (queues, socket buffers, waiting PUBLISHes), ``floor`` the rest
    # (code, connections), taken as resident minus held near the mark.
    def input_received(self, size: int) -> None:
        """Count input bytes; look at the resident size every ``MEMORY_CHECK_BYTES``."""
        self.bytes_in += size
        if self.bytes_in >= self.next_check:
            self.check_memory()

    def in_use(self, resident: int) -> int:
        """The resident size the broker needs: at most resident, at most floor + held."""
        held = self.held_bytes()
        if resident - held < self.floor:
            self.floor = resident - held
        return min(resident, self.floor + held)

    def _trimmed_resident(self, now: float) -> int | None:
        """Give free heap back to the system (at most every TRIM_INTERVAL) and read again."""
        if self.trim is None or now < self.next_trim:
            return None
        self.next_trim = now + TRIM_INTERVAL
        self.trim(0)
        return self.read_resident()

    def check_memory(self, tick: bool = False) -> None:
        self.next_check = self.bytes_in + MEMORY_CHECK_BYTES
        if not self.budget:
            return
        resident = self.read_resident()
        now = time.monotonic()
        if self.memory_full:
            if not tick:
                return  # room is looked for on the housekeeping ticks
            if resident >= self.resume_at:
                resident = self._trimmed_resident(now) or resident
            used = resident if self.trim is not None else self.in_use(resident)
            # Under the resume mark, or under the pause mark with (almost) no message left to
            # free: what remains is the broker itself (connections), waiting would not help.
            if used < self.resume_at or (used < self.pause_at and self.held_bytes() < self.margin // 2):
                self.memory_full = False
                log.info("memory budget: room again (%d MiB in use), reading publishers", used >> 20)
                for feeder in list(self.waiting):
                    feeder.wake()
            return
        if resident < self.pause_at:
            if tick and resident >= self.resume_at and self.trim is None:
                self.floor = resident - self.held_bytes()  # a fresh picture, near the mark
            return
        if self.trim is not None:
            trimmed = self._trimmed_resident(now)
            if trimmed is not None and trimmed < self.pause_at:
                return  # it was free memory
            used = resident if trimmed is None else trimmed
        else:
            if now < self.next_trim:
                return  # counted a moment ago
            self.next_trim = now + TRIM_INTERVAL
            used = self.in_use(resident)
            if used < self.pause_at:
                return
        self.memory_full = True
        log.warning(
            "memory budget: %d MiB in use of max_memory %d MiB; publishers are not read until there is room",
            used >> 20, self.budget >> 20,
        )
