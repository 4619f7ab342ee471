"""The storage interface every backend implements (SQLite default, in-memory).

Design (why it looks like this):

* Writes are *synchronous and buffered*: the engine calls ``enqueue``,
  ``save_subscription``... from its (synchronous, sans-I/O) packet handlers;
  nothing is written yet. ``commit()`` returns a future that resolves once
  everything written before the call is durable. All writes buffered while a
  commit is in progress go into the next one: group commit, one transaction
  (and one fsync) for many messages. The engine acknowledges a QoS 1/2 PUBLISH
  only from that future's callback.
* Reads are ``async`` and see every write issued before them (a backend
  commits or consults its buffer first).
* Offline queues live in the backend, not in RAM: the engine keeps counters
  and reads a session's queue in pages (``read_queue``) when it drains it.
* A message fanned out to many sessions is stored once: a backend recognises a
  ``Message`` object it has written or read (by identity, ``storage/identity.py``)
  and refers to the same row; the core never sees row ids. A backend drops a
  message when no queue entry and no retained slot refers to it any more,
  checked at the end of each batch.
* The storage knows nothing of the protocol: it imports only ``broker.message``,
  and keeps MQTT 5 properties as a dict it serializes generically.
* Lack of space does not fail a commit: the backend keeps the writes, sets
  ``full`` and retries until they are durable (the commit future waits that
  long); meanwhile the broker refuses new messages that would need storage.
* Any other failed commit stops the store: every later commit and read raises.
  The broker then stops rather than acknowledge anything it cannot keep.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from broker.message import Message, SubscriptionOptions

NEVER_EXPIRES = 0xFFFFFFFF  # v5 session expiry interval meaning "never"

# Queue entry states
QUEUED = 0  # not sent yet
SENT = 1  # PUBLISH sent with packet_id, awaiting PUBACK (QoS 1) / PUBREC (QoS 2)
RELEASED = 2  # QoS 2: PUBREC received, PUBREL sent, awaiting PUBCOMP


# The message type is the core's and the storage's common value (broker/message.py): the
# storage's row ids live in the backends (broker/storage/identity.py), not on the message.
StoredMessage = Message  # deprecated name, kept while older code still imports it


@dataclass(slots=True)
class QueueEntry:
    """One message in one session's outbound queue, in delivery order (seq)."""

    seq: int  # strictly increasing per session
    message: Message
    qos: int  # delivery QoS: min(published QoS, granted QoS)
    retain: bool = False  # retain flag as delivered (retain-as-published)
    subscription_ids: list[int] = field(default_factory=list)
    state: int = QUEUED
    packet_id: int | None = None
    # The core's AckGate (broker/core/ackgate.py) of the PUBLISH this copy came from, while
    # that publisher's acknowledgement may wait for this copy's; never stored.
    gate: Any = None


@dataclass(slots=True)
class SubscriptionRecord:
    topic_filter: str  # as subscribed, including any "$share/group/" prefix
    options: SubscriptionOptions
    subscription_id: int | None = None


@dataclass(slots=True)
class SessionRecord:
    """A persistent session as stored; queue entries are read separately."""

    client_id: str
    expiry_interval: int  # seconds; NEVER_EXPIRES for v3.1.1 persistent sessions
    protocol_level: int
    disconnected_at: float | None = None  # wall clock of the last disconnect
    subscriptions: list[SubscriptionRecord] = field(default_factory=list)
    inbound_qos2: set[int] = field(default_factory=set)  # PUBREC sent, PUBREL awaited
    # Filled in by load_sessions (not written by save_session):
    queued_count: int = 0  # queue entries (any state)
    queued_bytes: int = 0  # sum of payload sizes of those entries
    last_seq: int = 0  # highest seq in the queue, 0 if empty


def stamp_received(message: Message) -> float:
    """The arrival time a backend stores with a new message row: the one the engine set
    when it routed the message, else now (the time it is stored)."""
    received_at = message.received_at
    if received_at is None:
        received_at = message.received_at = time.time()
    return received_at


def oldest_received(times: Iterable[float | None]) -> float | None:
    """The earliest arrival time, or None when one is unknown (it is older than any known)."""
    oldest: float | None = None
    for received_at in times:
        if received_at is None:
            return None
        if oldest is None or received_at < oldest:
            oldest = received_at
    return oldest


class CorruptDatabase(Exception):
    """The database file is damaged; it has been moved aside, never wiped."""


class Storage(ABC):
    """Persistence for sessions, their queues, inbound QoS 2 state and retained messages."""

    # Commits that had writes to make durable: a statistic, and how the contract checks
    # that awaited commits are separate and concurrent ones may be grouped.
    commits_done: int = 0

    # ---- life cycle -------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Open or create the store. Raises CorruptDatabase (after moving the file aside)."""

    @abstractmethod
    async def close(self) -> None:
        """Commit everything buffered, then release resources."""

    @property
    @abstractmethod
    def dirty(self) -> bool:
        """True when writes were issued that no ``commit()`` call covers yet.

        The one place that says "a commit is pending": the engine asks here before it
        waits for (or skips) a commit, so no caller has to remember to flag its writes.
        """

    @property
    def full(self) -> bool:
        """Out of space (or below the configured reserve): refuse what would need storage."""
        return False

    @abstractmethod
    def commit(self) -> asyncio.Future[None]:
        """A future that resolves when every write issued so far is durable.

        Calls made while a commit is in flight share the next commit (group commit).
        """

    # ---- startup reads ------------------------------------------------------
    @abstractmethod
    async def load_sessions(self) -> list[SessionRecord]:
        """Every stored session with subscriptions, inbound QoS 2 ids and queue stats."""

    @abstractmethod
    async def load_retained(self) -> list[Message]:
        """Every retained message (recognised by this storage if queued again)."""

    # ---- queue reads ------------------------------------------------------------
    @abstractmethod
    async def read_queue(self, client_id: str, after_seq: int, limit: int) -> list[QueueEntry]:
        """Up to ``limit`` entries with seq > after_seq, in seq order."""

    # ---- buffered writes (durable after the next commit) ----------------------------
    @abstractmethod
    def save_session(self, record: SessionRecord) -> None:
        """Insert or update the session row (client_id, expiry, level, disconnected_at).

        Subscriptions, inbound_qos2 and the queue are written by their own calls.
        """

    @abstractmethod
    def delete_session(self, client_id: str) -> None:
        """Remove the session with its subscriptions, queue and inbound QoS 2 ids."""

    @abstractmethod
    def save_subscription(self, client_id: str, sub: SubscriptionRecord) -> None:
        """Insert or replace the subscription (client_id, sub.topic_filter)."""

    @abstractmethod
    def delete_subscription(self, client_id: str, topic_filter: str) -> None: ...

    @abstractmethod
    def enqueue(self, client_id: str, entry: QueueEntry) -> None:
        """Append an entry; its message is written unless this storage already has it."""

    @abstractmethod
    def update_entry(self, client_id: str, seq: int, state: int, packet_id: int | None) -> None: ...

    @abstractmethod
    def delete_entry(self, client_id: str, seq: int) -> None:
        """Remove an acknowledged (or dropped/expired) entry."""

    @abstractmethod
    def add_inbound_qos2(self, client_id: str, packet_id: int) -> None: ...

    @abstractmethod
    def remove_inbound_qos2(self, client_id: str, packet_id: int) -> None: ...

    # ---- delayed wills (MQTT 5 Will Delay Interval) -----------------------------------------
    @abstractmethod
    async def load_wills(self) -> list[tuple[str, Message, float]]:
        """Every pending will: (client_id, message, wall-clock time it is due)."""

    @abstractmethod
    def save_will(self, client_id: str, message: Message, due: float) -> None:
        """Keep a will whose publication is delayed (a self-contained copy)."""

    @abstractmethod
    def delete_will(self, client_id: str) -> None:
        """The will was published or cancelled (a reconnect within the delay)."""

    @abstractmethod
    def set_retained(self, topic: str, message: Message | None) -> None:
        """Set or clear (None) the retained message of a topic (written unless already stored)."""

    # ---- statistics ------------------------------------------------------------------------
    @abstractmethod
    async def oldest_queued(self) -> dict[str, float | None]:
        """For every session with queued entries: when the broker received the oldest of
        their messages (``time.time()``), None when unknown (a message stored before
        schema 3 kept arrival times). Sees every write issued before the call."""

    @abstractmethod
    async def message_count(self) -> int:
        """Messages stored after garbage collection: each counted once however many queue
        entries and retained slots refer to it (for $SYS and to check that nothing leaks)."""
