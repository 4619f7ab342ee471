"""In-memory storage: plain dicts, nothing survives the process.

Used for brokers that need no persistence and as the reference the SQLite
backend is tested against (tests/storage/test_differential.py). It keeps the same
observable behaviour as SQLite on purpose:

* properties are stored encoded (``serialization``) and decoded on read, so
  the same values are accepted or refused and come back in the same shapes;
* every read returns fresh objects, so callers mutating them cannot alter
  the store;
* unreferenced messages are dropped at ``commit()``, not at the moment their
  last reference goes, exactly like SQLite drops them at the end of a batch.
  A message object is recognised by identity (``identity.MessageRows``) while
  its row exists.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right, insort

from broker.message import Message, SubscriptionOptions
from broker.storage.base import (
    QueueEntry,
    SessionRecord,
    Storage,
    SubscriptionRecord,
)
from broker.storage.identity import MessageRows
from broker.storage.serialization import decode_properties, encode_properties

# Field positions of a stored message tuple.
_TOPIC, _PAYLOAD, _QOS, _RETAIN, _PROPS, _EXPIRES = range(6)


class _Queue:
    """One session's queue: seqs kept sorted for paging, entries by seq."""

    __slots__ = ("seqs", "entries")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        # seq -> [message_id, qos, retain, subscription_ids tuple, state, packet_id]
        self.entries: dict[int, list] = {}


class MemoryStorage(Storage):
    def __init__(self) -> None:
        self.commits_done = 0  # commit() calls that had writes to "commit"
        self._dirty = False
        self._sessions: dict[str, tuple[int, int, float | None]] = {}
        self._subscriptions: dict[str, dict[str, tuple]] = {}
        self._inbound: dict[str, set[int]] = {}
        self._queues: dict[str, _Queue] = {}
        self._messages: dict[int, tuple] = {}
        self._refs: dict[int, int] = {}
        self._retained: dict[str, int] = {}
        self._wills: dict[str, tuple] = {}  # client_id -> will row and the time it is due
        self._gc_candidates: set[int] = set()
        self._next_id = 0
        self._rows = MessageRows()

    # ---- life cycle -------------------------------------------------------
    async def open(self) -> None:
        """Nothing to open: the store starts empty."""

    async def close(self) -> None:
        self._collect()

    @property
    def dirty(self) -> bool:
        return self._dirty

    def commit(self) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        if self._dirty:
            self.commits_done += 1
            self._dirty = False
        self._collect()
        future.set_result(None)
        return future

    # ---- reads ---------------------------------------------------------------
    async def load_sessions(self) -> list[SessionRecord]:
        records = []
        for client_id in sorted(self._sessions):
            expiry, level, disconnected_at = self._sessions[client_id]
            subs = self._subscriptions.get(client_id, {})
            record = SessionRecord(
                client_id=client_id,
                expiry_interval=expiry,
                protocol_level=level,
                disconnected_at=disconnected_at,
                subscriptions=[_subscription_record(f, subs[f]) for f in sorted(subs)],
                inbound_qos2=set(self._inbound.get(client_id, ())),
            )
            queue = self._queues.get(client_id)
            if queue is not None:
                messages = self._messages
                count = size = last = 0
                for seq in queue.seqs:
                    message = messages.get(queue.entries[seq][0])
                    if message is not None:  # same as SQLite's inner join
                        count += 1
                        size += len(message[_PAYLOAD])
                        last = seq
                record.queued_count = count
                record.queued_bytes = size
                record.last_seq = last
            records.append(record)
        return records

    async def load_wills(self) -> list[tuple[str, Message, float]]:
        return [
            (client_id, Message(topic, payload, qos, retain, decode_properties(props), expires), due)
            for client_id, (topic, payload, qos, retain, props, expires, due) in sorted(self._wills.items())
        ]

    def save_will(self, client_id: str, message: Message, due: float) -> None:
        self._dirty = True
        self._wills[client_id] = (
            message.topic,
            bytes(message.payload),
            message.qos,
            bool(message.retain),
            encode_properties(message.properties),
            message.expires_at,
            due,
        )

    def delete_will(self, client_id: str) -> None:
        self._dirty = True
        self._wills.pop(client_id, None)

    async def load_retained(self) -> list[Message]:
        result = []
        for topic in sorted(self._retained):
            message_id = self._retained[topic]
            if message_id in self._messages:
                result.append(self._message(message_id))
        return result

    async def read_queue(self, client_id: str, after_seq: int, limit: int) -> list[QueueEntry]:
        queue = self._queues.get(client_id)
        if queue is None or limit <= 0:
            return []
        result = []
        start = bisect_right(queue.seqs, after_seq)
        for seq in queue.seqs[start:]:
            message_id, qos, retain, sub_ids, state, packet_id = queue.entries[seq]
            if message_id not in self._messages:
                continue
            result.append(
                QueueEntry(
                    seq=seq,
                    message=self._message(message_id),
                    qos=qos,
                    retain=retain,
                    subscription_ids=list(sub_ids),
                    state=state,
                    packet_id=packet_id,
                )
            )
            if len(result) >= limit:
                break
        return result

    # ---- writes -----------------------------------------------------------------
    def save_session(self, record: SessionRecord) -> None:
        self._dirty = True
        self._sessions[record.client_id] = (
            record.expiry_interval,
            record.protocol_level,
            record.disconnected_at,
        )

    def delete_session(self, client_id: str) -> None:
        self._dirty = True
        self._sessions.pop(client_id, None)
        self._subscriptions.pop(client_id, None)
        self._inbound.pop(client_id, None)
        queue = self._queues.pop(client_id, None)
        if queue is not None:
            for entry in queue.entries.values():
                self._unref(entry[0])

    def save_subscription(self, client_id: str, sub: SubscriptionRecord) -> None:
        self._dirty = True
        options = sub.options
        self._subscriptions.setdefault(client_id, {})[sub.topic_filter] = (
            options.qos,
            bool(options.no_local),
            bool(options.retain_as_published),
            options.retain_handling,
            sub.subscription_id,
        )

    def delete_subscription(self, client_id: str, topic_filter: str) -> None:
        self._dirty = True
        subs = self._subscriptions.get(client_id)
        if subs is not None:
            subs.pop(topic_filter, None)
            if not subs:
                del self._subscriptions[client_id]

    def _row(self, message: Message) -> int:
        """The row of ``message``: the one it was stored or read as, or a new one."""
        message_id = self._rows.get(message)
        if message_id and message_id in self._messages:
            return message_id
        properties = encode_properties(message.properties)
        self._dirty = True
        self._next_id += 1
        message_id = self._next_id
        self._messages[message_id] = (
            message.topic,
            bytes(message.payload),
            message.qos,
            bool(message.retain),
            properties,
            message.expires_at,
        )
        self._refs[message_id] = 0
        self._gc_candidates.add(message_id)  # dropped at commit unless referenced
        self._rows.remember(message, message_id)
        return message_id

    def enqueue(self, client_id: str, entry: QueueEntry) -> None:
        message_id = self._row(entry.message)
        self._dirty = True
        queue = self._queues.get(client_id)
        if queue is None:
            queue = self._queues[client_id] = _Queue()
        seq = entry.seq
        previous = queue.entries.get(seq)
        if previous is not None:  # contract violation (seq reused): replace, like SQLite
            self._unref(previous[0])
        elif not queue.seqs or seq > queue.seqs[-1]:
            queue.seqs.append(seq)
        else:
            insort(queue.seqs, seq)
        queue.entries[seq] = [
            message_id,
            entry.qos,
            bool(entry.retain),
            tuple(entry.subscription_ids),
            entry.state,
            entry.packet_id,
        ]
        self._refs[message_id] = self._refs.get(message_id, 0) + 1

    def update_entry(self, client_id: str, seq: int, state: int, packet_id: int | None) -> None:
        self._dirty = True
        queue = self._queues.get(client_id)
        entry = queue.entries.get(seq) if queue is not None else None
        if entry is not None:
            entry[4] = state
            entry[5] = packet_id

    def delete_entry(self, client_id: str, seq: int) -> None:
        self._dirty = True
        queue = self._queues.get(client_id)
        if queue is None:
            return
        entry = queue.entries.pop(seq, None)
        if entry is None:
            return
        seqs = queue.seqs
        if seqs[0] == seq:  # the usual case: acknowledgements arrive in order
            del seqs[0]
        else:
            del seqs[bisect_right(seqs, seq) - 1]
        if not queue.entries:
            del self._queues[client_id]
        self._unref(entry[0])

    def add_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self._dirty = True
        self._inbound.setdefault(client_id, set()).add(packet_id)

    def remove_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self._dirty = True
        ids = self._inbound.get(client_id)
        if ids is not None:
            ids.discard(packet_id)
            if not ids:
                del self._inbound[client_id]

    def set_retained(self, topic: str, message: Message | None) -> None:
        row = self._row(message) if message is not None else 0
        self._dirty = True
        previous = self._retained.pop(topic, None)
        if previous is not None:
            self._unref(previous)
        if row:
            self._retained[topic] = row
            self._refs[row] = self._refs.get(row, 0) + 1

    # ---- statistics ------------------------------------------------------------------
    async def message_count(self) -> int:
        self._collect()
        return len(self._messages)

    # ---- internals -------------------------------------------------------------------
    def _unref(self, message_id: int) -> None:
        refs = self._refs.get(message_id, 0) - 1
        self._refs[message_id] = refs
        if refs <= 0:
            self._gc_candidates.add(message_id)

    def _collect(self) -> None:
        """Drop messages that nothing refers to (deferred so a message may move
        from one reference to another within one step)."""
        refs = self._refs
        for message_id in self._gc_candidates:
            if refs.get(message_id, 0) <= 0:
                refs.pop(message_id, None)
                self._messages.pop(message_id, None)
        self._gc_candidates.clear()

    def _message(self, message_id: int) -> Message:
        topic, payload, qos, retain, properties, expires_at = self._messages[message_id]
        message = Message(topic, payload, qos, retain, decode_properties(properties), expires_at)
        self._rows.remember(message, message_id)
        return message


def _subscription_record(topic_filter: str, row: tuple) -> SubscriptionRecord:
    qos, no_local, retain_as_published, retain_handling, subscription_id = row
    return SubscriptionRecord(
        topic_filter=topic_filter,
        options=SubscriptionOptions(
            qos=qos,
            no_local=no_local,
            retain_as_published=retain_as_published,
            retain_handling=retain_handling,
        ),
        subscription_id=subscription_id,
    )
