"""The broker engine: sessions, routing, retained messages, wills and expiry.

Everything here is synchronous and runs on the event loop thread; it never
awaits except in start-up/shutdown and when a reconnecting session's stored
queue is read. Storage writes are buffered (see ``storage.base``) and made
durable by group commits that connections wait for before acknowledging; whether
a commit is pending is the storage's own state (``Storage.dirty``), never a copy.
The life cycle of sessions (create, resume, take over, expire, wills) is in
``sessions.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from broker.auth.access import AccessControl
from broker.auth.file_backend import FileBackend
from broker.config import Config
from broker.core.ackgate import AckGate
from broker.core.empty import EMPTY_DICT
from broker.core.flow import ENTRY_OVERHEAD, FlowControl
from broker.core.queuelimits import QueueLimits
from broker.core.retained import RetainedStore
from broker.core.session import Session, Subscription
from broker.core.sessions import SessionLifecycle
from broker.core.subscriptions import SubscriptionTree
from broker.core.systopics import SysTopics
from broker.core.takeovers import TakeoverWatch
from broker.core.timers import Timers
from broker.core.topic_limits import TopicLimits
from broker.core.transport import Transport
from broker.protocol.packets import SubscriptionOptions
from broker.protocol.topics import split_shared
from broker.message import Message
from broker.storage.base import Storage, SubscriptionRecord



class ClientConnection(Protocol):
    """What the engine (and what reads its state: $SYS, metrics) needs of the connections
    it serves (``core/connection.py``)."""

    session: Session | None  # set once CONNECT is accepted
    version: int  # MQTT protocol level
    transport: Transport

    def check_keepalive(self, now: float) -> float | None:
        """Close the connection if it is past its deadline; else the time to look again."""

    def shutdown(self) -> None: ...

    def buffered_bytes(self) -> int:
        """Bytes held for this client: unsent output and PUBLISHes waiting to be handled."""

    def __hash__(self) -> int: ...  # a key of the keepalive timers

log = logging.getLogger("broker")

# How long a commit that only QoS 1 acknowledgements wait for may be put off (core/ackgate.py):
# long enough for a subscriber nearby to acknowledge (its row then never reaches the disk), short
# next to the fsync itself on a Pi's SD card. 0.5 ms gave a lower QoS 1 p99 at 1000 msg/s, but
# in three full benchmark runs the 10,000-devices scenario's first round then had a p99 of
# 29-60 ms (0.5-0.6 ms with 2 ms); the cause was not found, so 2 ms stays.
COMMIT_GRACE = 0.002

# Upper bounds (seconds) of the storage commit latency histogram (``broker.ops.metrics``).
COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# Connection.close reasons -> metric label; reasons not listed are protocol errors, except
# lost connections ("connection lost: ...", "closed by client").
DISCONNECT_REASONS = {
    "disconnected": "client_disconnect",
    "disconnected with will": "client_disconnect",
    "closed by client": "connection_lost",
    "keepalive timeout": "keepalive_timeout",
    "session taken over": "session_taken_over",
    "broker shutting down": "broker_shutdown",
    "storage commit failed": "storage_error",
    "storage read failed": "storage_error",
    "protocol_error": "protocol_error",
}


class Stats:
    """Counters for ``$SYS`` and metrics: plain integers, read at scrape time, one
    increment on the hot path each (metrics code never runs per message)."""

    __slots__ = (
        "received_by_qos", "sent_by_qos", "bytes_received", "bytes_sent",
        "connections_opened", "connects", "disconnects", "dropped_slow_consumer", "dropped_too_large", "dropped_expired",
        "dropped_stalled",
        "commits", "commit_seconds_sum", "commit_buckets",
    )

    def __init__(self) -> None:
        self.received_by_qos = [0, 0, 0]  # PUBLISH packets, by QoS
        self.sent_by_qos = [0, 0, 0]
        self.bytes_received = 0
        self.bytes_sent = 0
        self.connections_opened = 0
        self.connects = 0  # CONNECT accepted
        self.disconnects = dict.fromkeys(DISCONNECT_REASONS.values(), 0)
        # engine.dropped_messages counts every drop; these say why (the rest: queue full).
        self.dropped_slow_consumer = 0
        self.dropped_too_large = 0
        self.dropped_expired = 0
        # Queue limits that dropped for an online subscriber that stopped reading (core/flow.py).
        self.dropped_stalled = 0
        self.commits = 0
        self.commit_seconds_sum = 0.0
        self.commit_buckets = [0] * (len(COMMIT_SECONDS_BUCKETS) + 1)  # the last one: +Inf

    @property
    def publish_received(self) -> int:
        return sum(self.received_by_qos)

    @property
    def publish_sent(self) -> int:
        return sum(self.sent_by_qos)

    def count_disconnect(self, why: str) -> None:
        """One connected client gone, filed under a fixed set of reasons (metric labels)."""
        reason = DISCONNECT_REASONS.get(why)
        if reason is None:
            reason = "connection_lost" if why.startswith(("connection lost", "closed by client")) else "protocol_error"
        self.disconnects[reason] += 1

    def observe_commit(self, seconds: float) -> None:
        self.commits += 1
        self.commit_seconds_sum += seconds
        buckets = self.commit_buckets
        for i, bound in enumerate(COMMIT_SECONDS_BUCKETS):
            if seconds <= bound:
                buckets[i] += 1
                return
        buckets[-1] += 1



# One copy per client: (client id, granted QoS, retain as published, subscription ids).
Target = tuple[str, int, bool, list[int]]
# What ``route`` does for one match: its targets, how many subscriptions matched, and the
# clients with a No Local subscription among them (for whom the targets are merged anew).
DeliveryPlan = tuple[list[Target], int, frozenset[str]]


def merge_targets(normal: list[tuple[str, Subscription]], sender_id: str | None) -> tuple[list[Target], int]:
    """One target per client of ``normal`` (a client may have several matching filters),
    leaving out the sender's No Local subscriptions; also how many subscriptions count."""
    matched = 0
    merged: dict[str, list] = {}
    for client_id, sub in normal:
        options = sub.options
        if options.no_local and client_id == sender_id:
            continue
        matched += 1
        target = merged.get(client_id)
        if target is None:
            target = merged[client_id] = [options.qos, options.retain_as_published, []]
        else:
            if options.qos > target[0]:
                target[0] = options.qos
            target[1] = target[1] or options.retain_as_published
        if sub.subscription_id is not None:
            target[2].append(sub.subscription_id)
    # The id lists are shared by every message routed with this plan: never mutated.
    return [(client_id, qos, rap, ids) for client_id, (qos, rap, ids) in merged.items()], matched


def delivery_plan(normal: list[tuple[str, Subscription]]) -> DeliveryPlan:
    targets, matched = merge_targets(normal, None)
    no_local = frozenset(client_id for client_id, sub in normal if sub.options.no_local)
    return targets, matched, no_local


class Engine:
    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        self.sessions: dict[str, Session] = {}
        self.tree: SubscriptionTree[Subscription] = SubscriptionTree()
        self.topic_limits = TopicLimits(config.max_topic_levels, config.max_topic_length)
        self.takeovers = TakeoverWatch(config.max_takeovers_per_minute)
        self.retained = RetainedStore()
        # Every open connection (a dict used as a set: about half a set's size per entry).
        self.connections: dict[ClientConnection, None] = {}
        # Housekeeping deadlines (see timers.py): a tick pops what is due instead of scanning.
        self.expiry_timers: Timers[Session] = Timers()  # offline persistent sessions (wall clock)
        self.will_timers: Timers[str] = Timers()  # delayed wills by client id (wall clock)
        self.keepalive_timers: Timers[ClientConnection] = Timers()  # CONNECT deadline, keepalive (monotonic)
        self.purge_timers: Timers[Session] = Timers()  # stored messages that expire (wall clock)
        self.dropped_messages = 0  # every message dropped, whatever the reason (Stats: why)
        # Sessions with their own queue limits (bridges' backlogs), by client id.
        self.queue_limits: dict[str, QueueLimits] = {}
        # Client ids that only a bridge (a transport of protocol "bridge") may use.
        self.bridge_client_ids: set[str] = set()
        self.stats = Stats()
        self.flow = FlowControl(config, self.held_bytes)
        self.sys_topics = SysTopics(self)
        self._share_cursor: dict[tuple[str, str], int] = {}
        self.failure: BaseException | None = None
        self.loop = asyncio.get_running_loop()  # the engine lives on the loop that serves it
        # The acknowledgement gate of the QoS 1 PUBLISH being routed (core/ackgate.py), if any.
        self.ack_gate: AckGate | None = None
        self._next_commit: asyncio.Future[None] | None = None
        self._grace: asyncio.TimerHandle | None = None  # a commit waiting out COMMIT_GRACE
        self._purging = False
        self._running_commit: asyncio.Future[None] | None = None
        self.on_failure: Callable[[], None] = lambda: None  # set by the server: stop serving
        # Queue entries read back from storage at a time.
        self.queue_page = max(500, 2 * config.max_inflight_messages)
        # Queue entries an online persistent session holds in RAM at most; the rest stays in
        # storage and is read back in pages. Up to the queue limit (at most four pages): with
        # the default limits backpressure (flow.py) keeps a queue below it, so a busy
        # subscriber is not made to read its own messages back from disk.
        self.spill_at = max(self.queue_page, min(config.max_queued_messages, 4 * self.queue_page))
        self.lifecycle = SessionLifecycle(self)
        # AUTH: who may connect and use which topics (broker/auth); the server sets the configured one.
        self.auth = AccessControl(FileBackend())

    # ---- start-up and shutdown ----------------------------------------------------
    async def start(self) -> None:
        now = time.time()
        records = await self.storage.load_sessions()
        for message in await self.storage.load_retained():
            self.retained.set(message)
        self.lifecycle.load(records, await self.storage.load_wills(), now)
        if self.storage.dirty:
            await self.storage.commit()
        log.info("loaded %d persistent sessions and %d retained messages", len(self.sessions), len(self.retained))

    async def shutdown(self) -> None:
        """Close every connection (v5: DISCONNECT 0x8B) and make the state durable."""
        for conn in list(self.connections):
            try:
                conn.shutdown()
            except Exception:
                # One connection's socket error must not cost everyone the final commit.
                log.exception("closing a connection at shutdown failed")
        await self.storage.close()  # commits everything buffered
        if self._next_commit is not None and not self._next_commit.done():
            self._next_commit.set_result(None)

    # ---- memory ---------------------------------------------------------------------
    def held_bytes(self) -> int:
        """Bytes of messages held in RAM (each message once, however many queues hold it):
        queues of online sessions (of all sessions with the in-memory backend), unsent
        output, PUBLISHes waiting to be handled. For the memory budget (``flow.py``)."""
        in_ram = self.config.backend == "memory"
        seen: set[int] = set()
        total = 0
        for session in self.sessions.values():
            if session.connection is None:
                if in_ram:
                    total += session.queued_bytes + session.queued_count * ENTRY_OVERHEAD
                continue
            for entries in (session.pending, session.inflight.values()):
                for entry in entries:
                    total += ENTRY_OVERHEAD
                    message = entry.message
                    if id(message) not in seen:
                        seen.add(id(message))
                        total += len(message.payload)
        for conn in self.connections:
            total += conn.buffered_bytes()
        return total

    # ---- subscriptions --------------------------------------------------------------
    def add_subscription(
        self, session: Session, topic_filter: str, options: SubscriptionOptions, subscription_id: int | None
    ) -> bool:
        """Add or replace a subscription in RAM; returns True if it did not exist before."""
        group, _ = split_shared(topic_filter)
        sub = Subscription(session.client_id, topic_filter, options, subscription_id, group)
        if session.subscriptions is EMPTY_DICT:
            session.subscriptions = {}
        session.subscriptions[topic_filter] = sub
        return self.tree.add(session.client_id, topic_filter, sub)

    def subscribe(
        self, session: Session, topic_filter: str, options: SubscriptionOptions, subscription_id: int | None
    ) -> bool:
        """Add or replace a subscription (stored for a persistent session); True if new."""
        is_new = self.add_subscription(session, topic_filter, options, subscription_id)
        if session.persistent:
            self.storage.save_subscription(
                session.client_id, SubscriptionRecord(topic_filter, options, subscription_id)
            )
        return is_new

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        self._remove_from_tree(session, topic_filter)
        if session.persistent:
            self.storage.delete_subscription(session.client_id, topic_filter)
        return True

    def remove_subscriptions(self, session: Session) -> None:
        """Every subscription of an ending session leaves the tree (storage: with the session)."""
        for topic_filter in session.subscriptions:
            self._remove_from_tree(session, topic_filter)
        session.subscriptions.clear()

    def _remove_from_tree(self, session: Session, topic_filter: str) -> None:
        """Unsubscribe in the trie; a shared group's round-robin cursor goes with its last member."""
        self.tree.remove(session.client_id, topic_filter)
        group, plain = split_shared(topic_filter)
        if group is not None and not self.tree.has_subscribers(topic_filter):
            self._share_cursor.pop((group, plain), None)

    def retained_for(self, topic_filter: str) -> list[Message]:
        return self.retained.matching(topic_filter, self._clear_retained_in_storage)

    def _clear_retained_in_storage(self, topic: str) -> None:
        self.storage.set_retained(topic, None)

    # ---- routing --------------------------------------------------------------------
    def route(self, message: Message, sender_id: str | None, persist_retained: bool = True) -> int:
        """Deliver a published message to every matching session; returns how many matched.

        Updates the retained store when the message carries the retain flag.
        """
        if message.retain:
            if message.payload:
                self.retained.set(message)
                if persist_retained:
                    self.storage.set_retained(message.topic, message)
            elif self.retained.clear(message.topic) and persist_retained:
                self.storage.set_retained(message.topic, None)
        match = self.tree.match(message.topic)
        # Who gets a copy, worked out once per cached match (a device topic is routed over
        # and over): one copy per client, at its highest granted QoS, with every id.
        plan = match.plan
        if plan is None:
            plan = match.plan = delivery_plan(match.normal)
        targets, matched, no_local_clients = plan  # a DeliveryPlan
        if sender_id in no_local_clients:  # the publisher's own No Local subscriptions skip it
            targets, matched = merge_targets(match.normal, sender_id)
        sessions = self.sessions
        qos = message.qos
        retain = message.retain
        for client_id, granted, rap, sub_ids in targets:
            session = sessions.get(client_id)
            if session is not None:
                session.deliver(message, granted if granted < qos else qos, retain and rap, sub_ids)
        for group, topic_filter, members in match.shared:
            member = self._pick_share_member(group, topic_filter, members, message.topic)
            if member is None:
                continue
            matched += 1
            session = sessions.get(member.client_id)
            if session is not None:
                granted = member.options.qos
                sub_ids = [member.subscription_id] if member.subscription_id is not None else []
                session.deliver(
                    message, granted if granted < qos else qos, retain and member.options.retain_as_published, sub_ids
                )
        return matched

    def needs_storage(self, topic: str, retain: bool, qos: int, publisher: Session) -> bool:
        """Would routing this QoS 1/2 message write to storage? (Asked while storage is full.)

        True for a retained message, for QoS 2 from a persistent session (its packet id is
        stored), and when a persistent session subscribes: a superset of what ``route``
        writes, so a False answer means the message can be acknowledged without a commit.
        """
        if retain or (qos == 2 and publisher.persistent):
            return True
        match = self.tree.match(topic)
        sessions = self.sessions
        for client_id, _ in match.normal:
            session = sessions.get(client_id)
            if session is not None and session.persistent:
                return True
        for _, _, members in match.shared:
            for client_id in members:
                session = sessions.get(client_id)
                if session is not None and session.persistent:
                    return True
        return False

    def _pick_share_member(
        self, group: str, topic_filter: str, members: dict[str, Subscription], topic: str
    ) -> Subscription | None:
        """Round robin over members, preferring online ones with room in their receive window.

        AUTH: members whose ACL does not let them read ``topic`` are passed over."""
        subs = list(members.values())
        if not subs:
            return None
        key = (group, topic_filter)
        start = self._share_cursor.get(key, 0)
        count = len(subs)
        fallback = None
        for i in range(count):
            sub = subs[(start + i) % count]
            session = self.sessions.get(sub.client_id)
            if session is None:
                continue
            conn = session.connection
            if conn is not None and not conn.may_receive(topic):
                continue
            if conn is not None and not session.pending and len(session.inflight) < conn.send_quota:
                self._share_cursor[key] = (start + i + 1) % count
                return sub
            if fallback is None and (conn is not None or session.persistent):
                fallback = (i, sub)
        if fallback is None:
            return None
        i, sub = fallback
        self._share_cursor[key] = (start + i + 1) % count
        return sub

    # ---- housekeeping ---------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Every TICK_SECONDS (server/app.py): keepalive timeouts, due wills, expired sessions;
        each costs what is due (timers.py), not what exists."""
        monotonic = time.monotonic()
        for conn in self.keepalive_timers.due(monotonic):
            next_check = conn.check_keepalive(monotonic)
            if next_check is not None:
                self.keepalive_timers.schedule(conn, next_check)
        self.flow.check_stalls(monotonic)
        self.flow.check_memory(tick=True)
        self.lifecycle.publish_due_wills(now)
        self.lifecycle.expire(now)
        self.sys_topics.publish(now)
        if not self._purging:
            due = []
            for s in self.purge_timers.due(now):
                expiry = s.earliest_expiry
                if self.sessions.get(s.client_id) is not s or expiry is None:
                    continue
                if expiry > now:
                    self.purge_timers.schedule(s, expiry)
                elif s.connection is None or s.backlog:
                    due.append(s)
                else:  # online, everything in RAM: pump() drops what expires; look again later
                    self.purge_timers.schedule(s, now + 60)
            if due:
                self._purging = True
                asyncio.ensure_future(self._purge_expired(due))
        if self.storage.dirty:
            self.commit()

    async def _purge_expired(self, sessions: list[Session]) -> None:
        """Remove expired messages from stored queues, one session at a time."""
        try:
            for session in sessions:
                if self.sessions.get(session.client_id) is session and not session.io_busy:
                    session.io_busy = True
                    conn = session.connection
                    try:
                        await session.purge_expired()
                    finally:
                        if session.connection is conn:
                            session.io_busy = False
        except Exception:
            log.exception("purging expired messages failed")
        finally:
            self._purging = False
            self.commit()

    def commit(self, urgent: bool = True) -> asyncio.Future[None] | None:
        """The future of the group commit that covers every write buffered so far.

        None when nothing is buffered or being committed. All calls within one event-loop
        iteration share one future; the storage commit starts at the end of the iteration,
        or, when no caller is ``urgent`` (core/ackgate.py), after COMMIT_GRACE seconds.
        """
        if self.storage.dirty:
            future = self._next_commit
            if future is None:
                future = self._next_commit = self.loop.create_future()
                if urgent:
                    self.loop.call_soon(self._start_commit)
                else:
                    self._grace = self.loop.call_later(COMMIT_GRACE, self._start_commit)
            elif urgent and self._grace is not None:
                self._grace.cancel()
                self._grace = None
                self.loop.call_soon(self._start_commit)
            return future
        future = self._running_commit
        if future is not None and not future.done():
            return future
        return None

    def _start_commit(self) -> None:
        self._grace = None
        future = self._next_commit
        if future is None or future.done():
            return  # shutdown committed it already
        self._next_commit = None
        self._running_commit = future
        started = time.perf_counter()
        stored = self.storage.commit()

        def done(result: asyncio.Future[None]) -> None:
            self.stats.observe_commit(time.perf_counter() - started)
            if future.done():
                return
            if result.cancelled():
                future.cancel()
            elif (error := result.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(None)

        stored.add_done_callback(done)
        future.add_done_callback(self._check_commit)

    def _check_commit(self, future: asyncio.Future[None]) -> None:
        if future.cancelled() or self.failure is not None:
            return
        exc = future.exception()
        if exc is not None:
            # Nothing more can be made durable: stop rather than acknowledge what we cannot keep.
            self.failure = exc
            log.critical("storage failed, stopping the broker: %s", exc)
            self.on_failure()
