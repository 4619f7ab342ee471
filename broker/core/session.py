"""A client's session: subscriptions, outbound queue and in-flight window, inbound QoS 2 state.

A session outlives its connections when it is persistent (v3.1.1 clean session
0, v5 session expiry > 0). Its outbound queue is mirrored to storage while it is
persistent; while it is offline the queue lives in storage only and the session
keeps just counters, so RAM does not grow with the number of queued messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from broker.core.empty import EMPTY_DEQUE, EMPTY_DICT, EMPTY_SET
from broker.protocol.packets import SubscriptionOptions
from broker.message import Message
from broker.storage.base import NEVER_EXPIRES, QUEUED, RELEASED, SENT, QueueEntry

log = logging.getLogger("broker")

if TYPE_CHECKING:
    from broker.config import Config
    from broker.core.queuelimits import QueueLimits
    from broker.core.engine import Engine


class Outlet(Protocol):
    """What a session needs of the connection it is attached to (``core/connection.py``)."""

    send_quota: int  # the client's receive window: QoS 1/2 PUBLISH in flight at most
    @property
    def peer(self) -> str:
        """The client's address, for log lines (a takeover names both)."""

    def send_publish(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: list[int],
        packet_id: int | None,
        dup: bool,
        after_commit: bool = False,
    ) -> bool:
        """False if the message cannot be sent to this client (larger than it accepts)."""

    def send_pubrel(self, packet_id: int, reason_code: int = 0, after_commit: bool = False) -> None: ...

    def may_receive(self, topic: str) -> bool:
        """AUTH: whether the client may read ``topic`` (its ACL; True without one)."""

    def close(self, why: str, reason_code: int | None, publish_will: bool = True, linger: bool = False) -> None: ...


class Subscription:
    """One topic filter of one session (for a shared filter, ``group`` is set)."""

    __slots__ = ("client_id", "topic_filter", "options", "subscription_id", "group")

    def __init__(
        self,
        client_id: str,
        topic_filter: str,
        options: SubscriptionOptions,
        subscription_id: int | None,
        group: str | None,
    ) -> None:
        self.client_id = client_id
        self.topic_filter = topic_filter
        self.options = options
        self.subscription_id = subscription_id
        self.group = group


class Session:
    __slots__ = (
        "engine",
        "client_id",
        "_expiry_interval",
        "persistent",
        "protocol_level",
        "subscriptions",
        "connection",
        "loading",
        "pending",
        "inflight",
        "inbound_qos2",
        "last_seq",
        "next_packet_id",
        "queued_count",
        "queued_bytes",
        "disconnected_at",
        "stored",
        "backlog",
        "read_after",
        "io_busy",
        "io_task",
        "_earliest_expiry",
        "expiry_seen",
        "acks",
        "stalled",
        "pending_expiry",
    )

    def __init__(self, engine: Engine, client_id: str, expiry_interval: int, protocol_level: int) -> None:
        self.engine = engine
        self.client_id = client_id
        self._expiry_interval = 0
        self.persistent = False  # kept in step with expiry_interval (read on every message)
        self.expiry_interval = expiry_interval  # seconds; 0 = ends with the connection
        self.protocol_level = protocol_level
        self.subscriptions: dict[str, Subscription] = EMPTY_DICT  # its own dict from the first SUBSCRIBE
        self.connection: Outlet | None = None
        self.loading = False  # reading the stored queue after a reconnect
        # Online only: queued in RAM, not yet sent. The shared empty deque (``empty.py``) until
        # the first entry, and again once offline: idle and offline sessions hold no deque.
        self.pending: deque[QueueEntry] = EMPTY_DEQUE
        self.inflight: dict[int, QueueEntry] = EMPTY_DICT  # online only: packet id -> SENT/RELEASED entry
        self.inbound_qos2: set[int] = EMPTY_SET  # PUBREC sent, PUBREL awaited (a set of its own once used)
        self.last_seq = 0
        self.next_packet_id = 1
        self.queued_count = 0  # entries waiting to be sent (RAM or storage)
        self.queued_bytes = 0
        self.disconnected_at: float | None = None
        self.stored = False  # has a row in storage (written once persistent, or loaded)
        # Persistent sessions keep at most a page of their queue in RAM: while ``backlog``
        # is set, entries after ``read_after`` are in storage only and are read in pages.
        self.backlog = False
        self.read_after = 0
        self.io_busy = False  # a refill, trim or purge is reading the stored queue
        self.io_task: asyncio.Future[None] | None = None  # that refill or trim, cancelled on takeover
        # Earliest expiry among entries held in storage only (None: none expire; may be early).
        self._earliest_expiry: float | None = None
        self.expiry_seen: float | None = None  # earliest expiry stored while a purge scans
        # Backpressure (``flow.py``): acknowledgements received (progress), over the high-water
        # mark with publishers held, and stopped reading (its queue limits drop again).
        self.acks = 0
        self.stalled = False
        # No entry in ``pending`` expires before this (None: none expires); may be early.
        self.pending_expiry: float | None = None

    # ---- properties ---------------------------------------------------------
    @property
    def expiry_interval(self) -> int:
        return self._expiry_interval

    @expiry_interval.setter
    def expiry_interval(self, seconds: int) -> None:
        self._expiry_interval = seconds
        self.persistent = seconds > 0

    @property
    def congested(self) -> bool:
        """Over its high-water mark: backpressure holds its feeders (``flow.py`` keeps the list)."""
        return self in self.engine.flow.congested

    @property
    def earliest_expiry(self) -> float | None:
        return self._earliest_expiry

    @earliest_expiry.setter
    def earliest_expiry(self, when: float | None) -> None:
        self._earliest_expiry = when
        if when is not None:  # the engine's housekeeping purges the stored queue then
            self.engine.purge_timers.schedule_earlier(self, when)

    def expired(self, now: float) -> bool:
        """True when an offline session's expiry interval has elapsed."""
        if self.connection is not None or self.disconnected_at is None:
            return False
        if self.expiry_interval == NEVER_EXPIRES:
            return False
        return now >= self.disconnected_at + self.expiry_interval

    # ---- delivery -------------------------------------------------------------
    def deliver(self, message: Message, qos: int, retain: bool, subscription_ids: list[int]) -> None:
        """Hand one routed message to this session (send now, queue in RAM or in storage)."""
        conn = self.connection
        if qos == 0:
            if conn is not None and not self.loading:
                conn.send_publish(message, 0, retain, subscription_ids, None, False)
                return
            if conn is None and not (self.persistent and self.engine.config.queue_qos0_messages):
                return
        if message.received_at is None:  # queued: how long it waits (python -m broker inspect)
            message.received_at = time.time()
        engine = self.engine
        config = self.limits if engine.queue_limits else engine.config
        size = len(message.payload)
        trim = False
        max_messages = config.max_queued_messages
        max_bytes = config.max_queued_bytes
        if (
            (max_messages and self.queued_count >= max_messages)
            or (max_bytes and self.queued_bytes + size > max_bytes)  # ``_queue_full``, inlined
        ) and (
            # Online and reading, the queue is not full: backpressure (``flow.py``) holds the
            # publishers that feed it, so it overshoots its limit by one message per publisher.
            # A message from no publisher that can be held (a will, the client itself) drops.
            conn is None or self.stalled or not self.engine.flow.can_hold(self)
        ) and (
            # Beyond the in-flight window the queue is full (an idle window takes it directly).
            conn is None or self.pending or self.backlog or len(self.inflight) >= conn.send_quota
        ):
            if config.max_queued_bytes and size > config.max_queued_bytes:
                self._count_drop()
                return  # could never fit
            if self.pending:
                self._drop_expired_pending()
            if config.queue_full_policy == "drop_oldest":
                while self.pending and self._queue_full(size):
                    self._drop_pending_head()
                # Still full: the oldest are in storage. Take this one and trim exactly there.
                trim = self._queue_full(size) and self.persistent
            if self._queue_full(size) and not trim:
                self._count_drop()
                return
        self.last_seq += 1
        entry = QueueEntry(self.last_seq, message, qos, retain, subscription_ids)
        self.queued_count += 1
        self.queued_bytes += size
        # While a stored queue is being read (``backlog``), a message must queue behind it in
        # storage, also for a session resumed without expiry (v5 clean start 0, expiry 0):
        # in RAM it would overtake the stored ones, and nothing would ever send it.
        stored = self.persistent or self.backlog
        if stored:
            storage = self.engine.storage
            storage.enqueue(self.client_id, entry)
            if trim:
                self.start_io(self._trim(), True)
        gate = self.engine.ack_gate if stored else None
        if conn is None or self.backlog or (self.persistent and len(self.pending) >= engine.spill_at):
            if gate is not None:
                gate.pin()  # held in storage only: the publisher's PUBACK waits for the commit
            if not self.backlog and conn is not None:
                # Spill: RAM keeps one page, the rest is read back from storage in order.
                self.backlog = True
                self.read_after = self.pending[-1].seq
            # Held in storage only: remember when the first of those expires.
            expires_at = message.expires_at
            if expires_at is not None:
                if self.earliest_expiry is None or expires_at < self.earliest_expiry:
                    self.earliest_expiry = expires_at
                if self.expiry_seen is None or expires_at < self.expiry_seen:
                    self.expiry_seen = expires_at
        else:
            if gate is not None:
                gate.add_copy()  # its subscriber's PUBACK may release the publisher's early
                entry.gate = gate
            if self.pending is EMPTY_DEQUE:
                self.pending = deque()
            self.pending.append(entry)
            if message.expires_at is not None:
                self._note_pending_expiry(message.expires_at)
            # (A full window is refilled by the acknowledgements: no pump call per message.)
            if not self.loading and len(self.inflight) < conn.send_quota:
                self.pump()
        if conn is not None and not self.stalled:
            flow = engine.flow
            if config is engine.config:  # ``over_high_water``, inlined for the common case
                if self.queued_count >= flow.high_messages or self.queued_bytes >= flow.high_bytes:
                    flow.queue_grew(self)
            elif flow.over_high_water(self):
                flow.queue_grew(self)

    def pump(self) -> None:
        """Send queued entries while the client's receive window has room."""
        conn = self.connection
        if conn is None or self.loading:
            return
        pending = self.pending
        if not pending:
            if self.backlog and not self.io_busy:
                self.start_refill()
            if self.congested and self.engine.flow.under_low_water(self):
                self.engine.flow.queue_drained(self)
            return
        inflight = self.inflight
        if inflight is EMPTY_DICT:
            inflight = self.inflight = {}
        quota = conn.send_quota
        now = time.time()
        while pending and len(inflight) < quota:
            entry = pending.popleft()
            self.queued_count -= 1
            self.queued_bytes -= len(entry.message.payload)
            expires_at = entry.message.expires_at
            if expires_at is not None and expires_at <= now:
                self._forget(entry)
                self.engine.stats.dropped_expired += 1
                continue
            if entry.qos == 0:
                conn.send_publish(entry.message, 0, entry.retain, entry.subscription_ids, None, False)
                self._forget(entry)
                continue
            packet_id = self._allocate_packet_id()
            persistent = self.persistent
            if persistent:
                self.engine.storage.update_entry(self.client_id, entry.seq, SENT, packet_id)
            # QoS 2 to a persistent session: the packet id must be on disk before the client
            # sees it, or a crash could make us send the message again under a new id.
            if not conn.send_publish(
                entry.message, entry.qos, entry.retain, entry.subscription_ids, packet_id, False,
                persistent and entry.qos == 2,
            ):
                self._forget(entry)  # too large for the client: discarded as if delivered
                continue
            entry.state = SENT
            entry.packet_id = packet_id
            inflight[packet_id] = entry
        if self.backlog and not self.io_busy and len(pending) < self.engine.queue_page // 2:
            self.start_refill()
        if self.congested and self.engine.flow.under_low_water(self):
            self.engine.flow.queue_drained(self)

    @property
    def limits(self) -> Config | QueueLimits:
        """This session's queue limits: its own if it has some (a bridge), else ``[limits]``."""
        engine = self.engine
        if engine.queue_limits:
            own = engine.queue_limits.get(self.client_id)
            if own is not None:
                return own
        return engine.config

    def _count_drop(self) -> None:
        self.engine.dropped_messages += 1
        if self.stalled:
            self.engine.stats.dropped_stalled += 1
        own = self.engine.queue_limits.get(self.client_id)
        if own is not None:
            own.dropped += 1

    def _queue_full(self, size: int) -> bool:
        config = self.limits
        return bool(
            (config.max_queued_messages and self.queued_count >= config.max_queued_messages)
            or (config.max_queued_bytes and self.queued_bytes + size > config.max_queued_bytes)
        )

    def _over_limits(self) -> bool:
        config = self.limits
        return bool(
            (config.max_queued_messages and self.queued_count > config.max_queued_messages)
            or (config.max_queued_bytes and self.queued_bytes > config.max_queued_bytes)
        )

    def _drop_pending_head(self) -> None:
        entry = self.pending.popleft()
        self.queued_count -= 1
        self.queued_bytes -= len(entry.message.payload)
        self._forget(entry)
        self._count_drop()

    def _note_pending_expiry(self, expires_at: float) -> None:
        if self.pending_expiry is None or expires_at < self.pending_expiry:
            self.pending_expiry = expires_at

    def _drop_expired_pending(self) -> None:
        """Remove expired entries from RAM; a scan only when one can have expired (a full
        queue calls this for every arriving message)."""
        now = time.time()
        if self.pending_expiry is None or self.pending_expiry > now:
            return
        self.pending_expiry = None
        kept: deque[QueueEntry] = deque()
        for entry in self.pending:
            expires_at = entry.message.expires_at
            if expires_at is not None and expires_at <= now:
                self.queued_count -= 1
                self.queued_bytes -= len(entry.message.payload)
                self._forget(entry)
                self.engine.stats.dropped_expired += 1
            else:
                kept.append(entry)
                if expires_at is not None:
                    self._note_pending_expiry(expires_at)
        self.pending = kept

    def _forget(self, entry: QueueEntry) -> None:
        if self.persistent:
            self.engine.storage.delete_entry(self.client_id, entry.seq)

    def _allocate_packet_id(self) -> int:
        packet_id = self.next_packet_id
        inflight = self.inflight
        while packet_id in inflight:
            packet_id = packet_id + 1 if packet_id < 65535 else 1
        self.next_packet_id = packet_id + 1 if packet_id < 65535 else 1
        return packet_id

    # ---- acknowledgements from the client --------------------------------------
    def on_puback(self, packet_id: int) -> None:
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 1:
            return
        del self.inflight[packet_id]
        self._forget(entry)
        gate = entry.gate
        if gate is not None:  # delivered: the publisher's PUBACK need not wait for this copy
            entry.gate = None
            gate.copy_acknowledged()
        self.acks += 1
        if self.stalled:
            self.stalled = False  # reading again: backpressure instead of drops
        self.pump()

    def on_pubrec(self, packet_id: int, reason_code: int) -> bool:
        """Returns False if the packet id is unknown (v5 answers PUBREL 0x92)."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 2:
            return False
        if reason_code >= 0x80:
            # The client refused the message: it is finished.
            del self.inflight[packet_id]
            self._forget(entry)
            self.pump()
            return True
        self.acks += 1
        self.stalled = False
        if entry.state != RELEASED:
            entry.state = RELEASED
            if self.persistent:
                self.engine.storage.update_entry(self.client_id, entry.seq, RELEASED, packet_id)
        conn = self.connection
        if conn is not None:
            # Released must be durable before PUBREL goes out: after a crash we must resend
            # PUBREL, never the PUBLISH the client has already passed on.
            conn.send_pubrel(packet_id, 0, self.persistent)
        return True

    def on_pubcomp(self, packet_id: int) -> None:
        entry = self.inflight.get(packet_id)
        if entry is None or entry.state != RELEASED:
            return
        del self.inflight[packet_id]
        self._forget(entry)
        self.acks += 1
        self.stalled = False
        self.pump()

    # ---- connection life cycle ---------------------------------------------------
    def _cancel_io(self) -> None:
        """The previous connection's reader is stale: stop it instead of letting its reads queue up
        in storage ahead of the commits every PUBACK waits for (issue 15: takeover fights)."""
        task, self.io_task = self.io_task, None
        if task is not None and not task.done():
            task.cancel()

    def attach(self, conn: Outlet) -> None:
        self._cancel_io()
        self.connection = conn
        self.disconnected_at = None
        self.io_busy = False  # a reader of the previous connection gives up when it sees this one

    def detach(self) -> None:
        """The connection is gone; what was in RAM is in storage (persistent) or dropped."""
        self._cancel_io()
        self.connection = None
        self.loading = False
        self.disconnected_at = time.time()
        self.stalled = False
        if self.congested:
            self.engine.flow.queue_drained(self)  # offline: its queue limits apply again
        if self.persistent:
            # Every entry is mirrored in storage; RAM copies are dropped. Counters stay:
            # in-flight entries count as queued again, since they will be resent.
            self.queued_count += len(self.inflight)
            self.queued_bytes += sum(len(e.message.payload) for e in self.inflight.values())
        for entry in self.pending:
            expires_at = entry.message.expires_at
            if expires_at is not None and (self.earliest_expiry is None or expires_at < self.earliest_expiry):
                self.earliest_expiry = expires_at
        self.pending = EMPTY_DEQUE
        self.inflight = EMPTY_DICT
        self.backlog = self.persistent
        self.read_after = 0
        self.io_busy = False

    def begin_loading(self) -> None:
        """A resumed session: in-flight messages first, then the stored queue, in pages.

        Until the first page is read, routed messages queue in storage behind it.
        """
        self.loading = True
        self.backlog = True
        self.read_after = 0
        self.start_refill()

    # ---- reading the stored queue ----------------------------------------------------
    # Refill, trim and purge each read the stored queue after ``read_after``; only one runs
    # at a time (``io_busy``), so none of them sees an entry another has just moved or dropped.
    def start_refill(self) -> None:
        self.start_io(self._refill())

    def start_io(self, work, is_trim: bool = False) -> bool:
        """Run one storage reader now, unless another one is running (then False)."""
        if self.io_busy:
            work.close()
            return False
        self.io_busy = True
        self.io_task = asyncio.ensure_future(self._run_io(work, is_trim))
        return True

    async def _run_io(self, work, is_trim: bool) -> None:
        conn = self.connection
        try:
            await work
        except Exception:
            log.exception("reading the stored queue of %s failed", self.client_id)
            if conn is not None and self.connection is conn:
                conn.close("storage read failed", 0x80)
            return
        finally:
            if self.connection is conn:
                self.io_busy = False  # (attach() hands the flag to a new connection's reader)
        if self.connection is not conn:
            return
        if (
            self.limits.queue_full_policy == "drop_oldest"
            # Online and reading, backpressure bounds the queue; what was over the limits while
            # offline is trimmed once the first page of a resumed session is read (loading).
            and (self.connection is None or self.stalled or self.loading)
            and self._over_limits()
        ):
            # A trim was refused or cut short while this reader ran: the oldest may be in RAM now.
            while self.pending and self._over_limits():
                self._drop_pending_head()
            if not is_trim and self.persistent and self._over_limits():
                self.start_io(self._trim(), True)
                return
        if conn is not None:
            self.loading = False
            self.pump()

    async def _trim(self) -> None:
        """Drop the oldest stored entries until the queue is within its limits (drop_oldest)."""
        conn = self.connection
        storage = self.engine.storage
        after = self.read_after
        while self._over_limits():
            page = await storage.read_queue(self.client_id, after, 32)
            if self.connection is not conn or not page:
                return
            for entry in page:
                after = entry.seq
                if entry.state != QUEUED or not self._over_limits():
                    continue
                self.queued_count -= 1
                self.queued_bytes -= len(entry.message.payload)
                storage.delete_entry(self.client_id, entry.seq)
                self._count_drop()

    async def purge_expired(self) -> None:
        """Delete stored entries whose message expired (they must not take queue room)."""
        conn = self.connection
        storage = self.engine.storage
        now = time.time()
        after = self.read_after
        earliest = None
        self.expiry_seen = None
        while True:
            page = await storage.read_queue(self.client_id, after, 500)
            if self.connection is not conn:
                return
            for entry in page:
                after = entry.seq
                expires_at = entry.message.expires_at
                if entry.state != QUEUED or expires_at is None:
                    continue
                if expires_at <= now:
                    self.queued_count -= 1
                    self.queued_bytes -= len(entry.message.payload)
                    storage.delete_entry(self.client_id, entry.seq)
                    self.engine.stats.dropped_expired += 1
                elif earliest is None or expires_at < earliest:
                    earliest = expires_at
            if len(page) < 500:
                break
        seen = self.expiry_seen
        self.earliest_expiry = earliest if seen is None or (earliest is not None and earliest < seen) else seen

    async def _refill(self) -> None:
        """Read the next page of the stored queue into RAM (on reconnect: with in-flight ones)."""
        conn = self.connection
        engine = self.engine
        page_size = engine.queue_page
        while True:
            issued_upto = self.last_seq
            page = await engine.storage.read_queue(self.client_id, self.read_after, page_size)
            if self.connection is not conn or conn is None:
                return
            resend = []
            for entry in page:
                if entry.seq > self.read_after:
                    self.read_after = entry.seq
                if entry.state == QUEUED:
                    if self.pending is EMPTY_DEQUE:
                        self.pending = deque()
                    self.pending.append(entry)
                    if entry.message.expires_at is not None:
                        self._note_pending_expiry(entry.message.expires_at)
                else:
                    resend.append(entry)
            if resend:
                self.queued_count -= len(resend)
                self.queued_bytes -= sum(len(e.message.payload) for e in resend)
                self.resend_inflight(resend)
            if len(page) >= page_size:
                return  # more later, when this page has drained
            if self.last_seq > issued_upto:
                continue  # messages arrived while reading: they are stored after this page
            self.backlog = False
            self.earliest_expiry = None  # everything is in RAM now
            return

    def resend_inflight(self, entries: list[QueueEntry]) -> None:
        """After a reconnect: re-send unacknowledged PUBLISH (DUP) and PUBREL, in order.

        Their state is already durable (it was read from storage), so no commit is awaited.
        """
        conn = self.connection
        assert conn is not None
        if self.inflight is EMPTY_DICT:
            self.inflight = {}
        for entry in entries:
            packet_id = entry.packet_id
            assert packet_id is not None
            self.inflight[packet_id] = entry
            if entry.state == SENT:
                if not conn.send_publish(entry.message, entry.qos, entry.retain, entry.subscription_ids, packet_id, True):
                    del self.inflight[packet_id]  # no longer readable (AUTH) or too large: finished
                    self._forget(entry)
            else:
                conn.send_pubrel(packet_id)
        if self.inflight:
            self.next_packet_id = max(self.inflight) % 65535 + 1
