"""SQLite storage (default): WAL journal, group commit, messages stored once.

Write path (why it is shaped like this):

* Write methods only record the *final state* of each touched row in dicts
  (per queue entry, subscription, session, inbound id, retained topic). That
  keeps them cheap and synchronous, and gives the cancel-out optimisation for
  free: a queue entry enqueued and deleted before the batch is written never
  reaches the disk, nor does a message nothing refers to any more.
* ``commit()`` hands the batch to one asyncio task that writes it in ONE
  transaction (one ``executemany`` per kind of statement, one fsync with
  ``synchronous=FULL``), in ONE hop to the database thread: a thread hop
  costs about as much as a small statement, so one per statement would
  halve the throughput (docs/benchmarks.md). Commits asked for while a
  batch is being written share the next batch: group commit.
* Message garbage collection is deferred to the end of each batch: deleted
  queue entries and replaced retained slots record their message id in a
  temporary table, and one statement deletes those no row refers to any
  more. So a message may move from one reference to another within a batch
  (e.g. redelivery to another shared-subscription member) without being lost.
  A message is written by the first ``enqueue``/``set_retained`` that refers
  to it and recognised afterwards by identity (``identity.MessageRows``).

Rows are never rewritten in place by the engine's normal flow except the
queue entry state, so the hot path per QoS 1/2 message is: one message
insert, one queue insert per subscriber, one update per send, one delete per
acknowledgement.

Lack of space (SQLITE_FULL, ENOSPC) is not a failure of the store: the
batch that could not be written is kept, ``full`` turns true (the broker
then refuses new messages that need storage), and the commit is retried
every ``retry_interval`` seconds, together with what was written since,
until it goes through; the commit futures resolve only then. An optional
reserve (``min_free_space``) turns ``full`` on before the disk is out of
space, while commits still go through. Any other failed commit stops the
store (``StorageFailed``).

The database thread is ours (``dbthread.DatabaseThread``): the standard
library's ``sqlite3`` connection lives on it from ``open()`` to ``close()``,
which stops the thread. Every statement runs there; the event loop never
touches the connection.

On open the file is checked (``PRAGMA quick_check`` on a read-only
connection, so a damaged file is never written to); a damaged file is moved
aside, never deleted, and ``CorruptDatabase`` is raised. The connection uses
``locking_mode=EXCLUSIVE``: a second broker on the same data directory gets
``DatabaseInUse`` instead of silently sharing (and corrupting) the queues.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from broker.message import Message, SubscriptionOptions
from broker.storage.base import (
    CorruptDatabase,
    QueueEntry,
    SessionRecord,
    Storage,
    SubscriptionRecord,
)
from broker.storage.dbthread import DatabaseThread
from broker.storage.identity import MessageRows
from broker.storage.serialization import (
    decode_ints,
    decode_properties,
    encode_ints,
    encode_properties,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

SYNC_MODES = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

# After a checkpoint, shrink the WAL back to this size: a burst of traffic must
# not leave a huge file behind on a small device.
WAL_SIZE_LIMIT = 16 * 1024 * 1024

# compact(): run when at least this many pages (4 KiB each) are free; vacuum this many at a time.
COMPACT_MIN_FREE_PAGES = 256
COMPACT_PAGES_PER_STEP = 1024

_WAL_MAGICS = (0x377F0682, 0x377F0683)  # big-/little-endian checksum variants

# Schema migrations: _MIGRATIONS[v] brings a database from version v-1 to v.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE sessions (
            client_id TEXT NOT NULL PRIMARY KEY,
            expiry_interval INTEGER NOT NULL,
            protocol_level INTEGER NOT NULL,
            disconnected_at REAL
        ) WITHOUT ROWID""",
        """CREATE TABLE subscriptions (
            client_id TEXT NOT NULL,
            topic_filter TEXT NOT NULL,
            qos INTEGER NOT NULL,
            no_local INTEGER NOT NULL,
            retain_as_published INTEGER NOT NULL,
            retain_handling INTEGER NOT NULL,
            subscription_id INTEGER,
            PRIMARY KEY (client_id, topic_filter)
        ) WITHOUT ROWID""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            qos INTEGER NOT NULL,
            retain INTEGER NOT NULL,
            properties BLOB,
            expires_at REAL
        )""",
        """CREATE TABLE queue (
            client_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            message_id INTEGER NOT NULL,
            qos INTEGER NOT NULL,
            retain INTEGER NOT NULL,
            subscription_ids BLOB,
            state INTEGER NOT NULL,
            packet_id INTEGER,
            PRIMARY KEY (client_id, seq)
        ) WITHOUT ROWID""",
        "CREATE INDEX queue_by_message ON queue (message_id)",
        """CREATE TABLE inbound_qos2 (
            client_id TEXT NOT NULL,
            packet_id INTEGER NOT NULL,
            PRIMARY KEY (client_id, packet_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE retained (
            topic TEXT NOT NULL PRIMARY KEY,
            message_id INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX retained_by_message ON retained (message_id)",
    ),
    # 2: delayed wills (MQTT 5 Will Delay Interval) survive a restart. A will is a
    # self-contained row: it refers to no message, so garbage collection ignores it.
    2: (
        """CREATE TABLE wills (
            client_id TEXT NOT NULL PRIMARY KEY,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            qos INTEGER NOT NULL,
            retain INTEGER NOT NULL,
            properties BLOB,
            expires_at REAL,
            due REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
}

# Repairs run at open: rows that can only exist if an earlier run broke the
# contract (e.g. reused a queue seq); removing them keeps the store bounded.
_SWEEP = (
    "DELETE FROM queue WHERE client_id NOT IN (SELECT client_id FROM sessions)",
    "DELETE FROM subscriptions WHERE client_id NOT IN (SELECT client_id FROM sessions)",
    "DELETE FROM inbound_qos2 WHERE client_id NOT IN (SELECT client_id FROM sessions)",
    "DELETE FROM queue WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = queue.message_id)",
    "DELETE FROM retained WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = retained.message_id)",
    """DELETE FROM messages WHERE
        NOT EXISTS (SELECT 1 FROM queue q WHERE q.message_id = messages.id)
        AND NOT EXISTS (SELECT 1 FROM retained r WHERE r.message_id = messages.id)""",
)

# Garbage collection: deleting a queue row or replacing/clearing a retained slot
# records the message id (temporary triggers: per connection, nothing on disk);
# at the end of the batch the recorded messages nothing refers to are deleted.
# The table has no key on purpose: an upsert's conflict policy would override an
# "OR IGNORE" inside the trigger, and duplicates are harmless for "id IN (...)".
_GC_SETUP = (
    "CREATE TEMP TABLE gc (id INTEGER NOT NULL)",
    """CREATE TEMP TRIGGER queue_gc AFTER DELETE ON main.queue
        BEGIN INSERT INTO gc VALUES (OLD.message_id); END""",
    """CREATE TEMP TRIGGER retained_gc_delete AFTER DELETE ON main.retained
        BEGIN INSERT INTO gc VALUES (OLD.message_id); END""",
    """CREATE TEMP TRIGGER retained_gc_update AFTER UPDATE OF message_id ON main.retained
        BEGIN INSERT INTO gc VALUES (OLD.message_id); END""",
)

_GC = """DELETE FROM messages WHERE id IN (SELECT id FROM temp.gc)
    AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.message_id = messages.id)
    AND NOT EXISTS (SELECT 1 FROM retained r WHERE r.message_id = messages.id)"""

_READ_QUEUE = """SELECT q.seq, q.qos, q.retain, q.subscription_ids, q.state, q.packet_id,
        m.id, m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at
    FROM queue q JOIN messages m ON m.id = q.message_id
    WHERE q.client_id = ? AND q.seq > ? ORDER BY q.seq LIMIT ?"""

# Pending queue operations (first item of the op list).
_INSERT = 0
_UPDATE = 1
_DELETE = 2

_T = TypeVar("_T")

_CORRUPTION_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}

# Seconds between two attempts at a commit that failed for lack of space.
FULL_RETRY_INTERVAL = 1.0
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


class DatabaseInUse(Exception):
    """Another connection (another broker on the same data_dir?) holds the database."""


class UnsupportedSchema(Exception):
    """The database was written by a newer broker (schema version too high)."""


class StorageFailed(Exception):
    """A commit failed (an I/O error; lack of space only while closing): its writes are
    lost, so every later commit and read fails too; the cause is in ``__cause__``. The
    broker should stop."""


class SqliteStorage(Storage):
    def __init__(
        self,
        path: str | os.PathLike,
        *,
        sync: str = "full",
        lock_timeout: float = 2.0,
        min_free_space: int = 0,
        retry_interval: float = FULL_RETRY_INTERVAL,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        self.path = Path(path)
        self.sync = sync
        self.lock_timeout = lock_timeout
        self.min_free_space = min_free_space  # bytes kept free on the file system; 0 = no reserve
        self.retry_interval = retry_interval
        self._retry: list[tuple] = []  # batches a commit could not write for lack of space
        self._space_error: BaseException | None = None  # why the last attempt failed, while full
        self._low_space = False  # free space below min_free_space at the last check
        self._watch: asyncio.Task | None = None  # re-checks the free space while it is low
        self._attempt: list[tuple] = []  # batches being written right now
        self._space_waiters: list[asyncio.Future[None]] = []  # readers told when space runs out
        self._closing = False
        self._reads = 0  # queue reads under way: close() lets them finish
        self._reads_idle: asyncio.Event | None = None
        self.commits_done = 0  # transactions written by the group commit
        self._thread: DatabaseThread | None = None  # the database thread, while open
        self._conn: sqlite3.Connection | None = None  # used on the database thread only
        self._next_id = 0
        self._rows = MessageRows()
        self._task: asyncio.Task | None = None
        self._waiters: list[asyncio.Future] = []  # resolved by the next batch
        self._inflight: list[asyncio.Future] = []  # resolved by the batch being written
        self._failure: BaseException | None = None
        self._reset_batch()

    # ---- the pending batch ----------------------------------------------------------
    def _reset_batch(self) -> None:
        self._dirty = False
        # message id -> row tuple, for messages stored since the last batch
        self._new_messages: dict[int, tuple] = {}
        # references to those new messages made in this batch
        self._new_refs: dict[int, int] = {}
        self._deleted_clients: set[str] = set()
        self._sessions: dict[str, tuple] = {}
        self._subscriptions: dict[tuple[str, str], tuple | None] = {}
        self._queue: dict[tuple[str, int], list] = {}
        self._inbound: dict[tuple[str, int], bool] = {}
        self._retained: dict[str, int | None] = {}
        self._wills: dict[str, tuple | None] = {}  # client_id -> will row, or None to delete

    def _take_batch(self) -> tuple:
        batch = (
            self._new_messages,
            self._new_refs,
            self._deleted_clients,
            self._sessions,
            self._subscriptions,
            self._queue,
            self._inbound,
            self._retained,
            self._wills,
        )
        self._reset_batch()
        return batch

    def _ref(self, message_id: int) -> None:
        if message_id in self._new_refs:
            self._new_refs[message_id] += 1

    def _unref(self, message_id: int) -> None:
        if message_id in self._new_refs:
            self._new_refs[message_id] -= 1

    # ---- life cycle -----------------------------------------------------------------
    async def open(self) -> None:
        if self._thread is not None:
            raise RuntimeError("storage already open")
        self._thread = DatabaseThread(f"edgemq-sqlite {self.path.name}")
        try:
            self._next_id = await self._run(self._open_sync)
            if self.min_free_space:
                free = await self._run(self._free_space)
                if free is not None:
                    self._update_space(free)
        except BaseException:
            self._stop_thread()
            raise

    def _open_sync(self) -> int:
        """Check, open, migrate and sweep the database (on the database thread).

        Returns the highest message id in use.
        """
        self._check_files()
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.lock_timeout)
        try:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            # New files: freed pages can be given back to the file system (compact()).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: cannot switch to WAL journal mode")
            conn.execute(f"PRAGMA synchronous = {SYNC_MODES[self.sync]}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            conn.execute("PRAGMA temp_store = MEMORY")
            self._migrate(conn)
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SWEEP:
                cursor = conn.execute(statement)
                if cursor.rowcount > 0:
                    log.warning("%s: removed %d inconsistent rows (%s)", self.path,
                                cursor.rowcount, statement.split(" WHERE")[0])
            conn.execute("COMMIT")
            for statement in _GC_SETUP:
                conn.execute(statement)
            next_id: int = conn.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_corruption(exc):
                raise self._move_aside(str(exc)) from exc
            if _is_busy(exc):
                raise DatabaseInUse(self._in_use_message()) from exc
            raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return next_id

    async def close(self) -> None:
        if self._thread is None:
            return
        self._closing = True  # out of space now: give up after one more attempt
        try:
            if self._dirty or self._task is not None:
                await self.commit()
        finally:
            if self._watch is not None:
                self._watch.cancel()
                await asyncio.gather(self._watch, return_exceptions=True)
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
            while self._reads:  # a session reading its queue as the broker stops: let it finish
                self._reads_idle = asyncio.Event()
                await self._reads_idle.wait()
            try:
                await self._run(self._close_sync)
            finally:
                self._stop_thread()

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _stop_thread(self) -> None:
        """Stop the database thread (idle by now: every call was awaited)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()

    def _run(self, function: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Run ``function(*args)`` on the database thread: one hop, one future."""
        if self._thread is None:
            raise RuntimeError("storage is not open")
        return self._thread.run(function, *args)

    @property
    def dirty(self) -> bool:
        return self._dirty

    def commit(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._failure is not None:
            future.set_exception(self._failed())
        elif self._thread is None:
            future.set_exception(RuntimeError("storage is not open"))
        elif self._dirty:
            self._waiters.append(future)
            if self._task is None:
                self._task = loop.create_task(self._commit_loop())
        elif self._task is not None:
            # Nothing new, but earlier writes are being written right now.
            self._inflight.append(future)
        else:
            future.set_result(None)
        return future

    async def _commit_loop(self) -> None:
        try:
            while self._waiters or self._retry:
                self._inflight += self._waiters
                self._waiters = []
                # Batches that failed for lack of space go first: writing them in order,
                # each with its garbage collection, is what committing them one by one does.
                batches = (self._retry + [self._take_batch()]) if self._dirty else self._retry
                self._retry = []
                self._attempt = batches
                try:
                    free = await self._write(batches)
                except BaseException as exc:
                    self._attempt = []
                    if isinstance(exc, Exception) and _is_out_of_space(exc) and not self._closing:
                        # Nothing was written: keep it all for the retry, before anything
                        # a reader sealed meanwhile (``_unwritten``).
                        self._retry = batches + self._retry
                        self._set_space_error(exc)
                        await asyncio.sleep(self.retry_interval)
                        continue
                    self._failure = exc
                    log.error("%s: commit failed, storage stopped: %r", self.path, exc)
                    error = self._failed()
                    for future in self._inflight + self._waiters:
                        if not future.done():
                            future.set_exception(error)
                    self._inflight, self._waiters = [], []
                    if not isinstance(exc, Exception):
                        raise
                    return
                self._attempt = []
                inflight, self._inflight = self._inflight, []
                for future in inflight:
                    if not future.done():
                        future.set_result(None)
                self._set_space_error(None)
                if free is not None:
                    self._update_space(free)
        finally:
            self._task = None

    # ---- out of space -------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return self._space_error is not None or self._low_space

    def _set_space_error(self, error: BaseException | None) -> None:
        was_full = self.full
        self._space_error = error
        if error is not None:
            waiters, self._space_waiters = self._space_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if error is not None and not was_full:
            log.error(
                "%s: out of disk space (%s): refusing new QoS 1/2 messages that need storage,"
                " delivering what is stored, retrying the commit every %g s",
                self.path, error, self.retry_interval,
            )
        elif error is None and was_full and not self.full:
            log.warning("%s: disk space available again: accepting messages again", self.path)

    def _update_space(self, free: int) -> None:
        """Turn the reserve condition on or off after a look at the free space."""
        low = free < self.min_free_space
        was_full = self.full
        self._low_space = low
        if low and not was_full:
            log.error(
                "%s: %d bytes free, below min_free_space (%d): refusing new QoS 1/2 messages"
                " that need storage until space is freed", self.path, free, self.min_free_space,
            )
        elif was_full and not self.full:
            log.warning("%s: %d bytes free again: accepting messages again", self.path, free)
        if low and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_space())

    async def _watch_space(self) -> None:
        """While below the reserve, look at the free space now and then (commits may be rare)."""
        try:
            while self._low_space and self._thread is not None:
                await asyncio.sleep(self.retry_interval)
                if self._task is None and self._thread is not None:  # else the commit loop looks
                    free = await self._run(self._free_space)
                    if free is not None:
                        self._update_space(free)
        finally:
            self._watch = None

    def _free_space(self) -> int | None:
        """Bytes available to us on the database's file system (database thread)."""
        try:
            stat = os.statvfs(self.path.parent)
        except OSError as exc:  # never fail a commit that is written already
            log.warning("%s: cannot read the free space: %s", self.path, exc)
            return None
        return stat.f_bavail * stat.f_frsize

    def _failed(self) -> StorageFailed:
        error = StorageFailed(
            f"{self.path}: a commit failed ({self._failure!r}); the writes it carried are lost"
            " and the store accepts no more work"
        )
        error.__cause__ = self._failure
        return error

    async def _fetch(self, sql: str, parameters: tuple = ()) -> list:
        return await self._run(self._fetch_sync, sql, parameters)

    def _fetch_sync(self, sql: str, parameters: tuple) -> list:
        return self._connection().execute(sql, parameters).fetchall()

    def _connection(self) -> sqlite3.Connection:
        """The sqlite3 connection (call on the database thread only)."""
        if self._conn is None:
            raise RuntimeError("storage is not open")
        return self._conn

    async def _flush(self) -> None:
        """Make reads see every write issued before them."""
        if self._thread is None:
            raise RuntimeError("storage is not open")
        if self._dirty or self._task is not None or self._failure is not None:
            await self.commit()

    # ---- reads -----------------------------------------------------------------------
    async def load_sessions(self) -> list[SessionRecord]:
        await self._flush()
        records: dict[str, SessionRecord] = {}
        for client_id, expiry, level, disconnected_at in await self._fetch(
            "SELECT client_id, expiry_interval, protocol_level, disconnected_at"
            " FROM sessions ORDER BY client_id"
        ):
            records[client_id] = SessionRecord(client_id, expiry, level, disconnected_at)
        for client_id, topic_filter, qos, no_local, rap, rh, sub_id in await self._fetch(
            "SELECT client_id, topic_filter, qos, no_local, retain_as_published, retain_handling,"
            " subscription_id FROM subscriptions ORDER BY client_id, topic_filter"
        ):
            record = records.get(client_id)
            if record is not None:
                record.subscriptions.append(
                    SubscriptionRecord(
                        topic_filter,
                        SubscriptionOptions(qos, bool(no_local), bool(rap), rh),
                        sub_id,
                    )
                )
        for client_id, packet_id in await self._fetch(
            "SELECT client_id, packet_id FROM inbound_qos2"
        ):
            record = records.get(client_id)
            if record is not None:
                record.inbound_qos2.add(packet_id)
        for client_id, count, size, last_seq in await self._fetch(
            "SELECT q.client_id, COUNT(*), SUM(LENGTH(m.payload)), MAX(q.seq)"
            " FROM queue q JOIN messages m ON m.id = q.message_id GROUP BY q.client_id"
        ):
            record = records.get(client_id)
            if record is not None:
                record.queued_count = count
                record.queued_bytes = size or 0
                record.last_seq = last_seq
        return list(records.values())

    async def load_wills(self) -> list[tuple[str, Message, float]]:
        await self._flush()
        rows = await self._fetch(
            "SELECT client_id, topic, payload, qos, retain, properties, expires_at, due"
            " FROM wills ORDER BY client_id"
        )
        return [
            (client_id, Message(topic, payload, qos, bool(retain), decode_properties(props), expires), due)
            for client_id, topic, payload, qos, retain, props, expires, due in rows
        ]

    def save_will(self, client_id: str, message: Message, due: float) -> None:
        self._dirty = True
        payload = message.payload
        self._wills[client_id] = (
            message.topic,
            payload if type(payload) is bytes else bytes(payload),
            message.qos,
            int(bool(message.retain)),
            encode_properties(message.properties),
            message.expires_at,
            due,
        )

    def delete_will(self, client_id: str) -> None:
        self._dirty = True
        self._wills[client_id] = None

    async def load_retained(self) -> list[Message]:
        await self._flush()
        rows = await self._fetch(
            "SELECT m.id, m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at"
            " FROM retained r JOIN messages m ON m.id = r.message_id ORDER BY r.topic"
        )
        return [
            self._read_message(mid, topic, payload, qos, retain, props, expires)
            for mid, topic, payload, qos, retain, props, expires in rows
        ]

    def _read_message(
        self, mid: int, topic: str, payload: bytes, qos: int, retain: int, props: bytes | None, expires: float | None
    ) -> Message:
        message = Message(topic, payload, qos, bool(retain), decode_properties(props), expires)
        self._rows.remember(message, mid)
        return message

    async def read_queue(self, client_id: str, after_seq: int, limit: int) -> list[QueueEntry]:
        if limit <= 0:
            return []
        self._reads += 1
        try:
            rows = await self._read_queue_rows(client_id, after_seq, limit)
        finally:
            self._reads -= 1
            if not self._reads and self._reads_idle is not None:
                self._reads_idle.set()
        return [
            QueueEntry(
                seq=seq,
                message=self._read_message(mid, topic, payload, m_qos, m_retain, props, expires),
                qos=qos,
                retain=bool(retain),
                subscription_ids=decode_ints(sub_ids),
                state=state,
                packet_id=packet_id,
            )
            for (seq, qos, retain, sub_ids, state, packet_id,
                 mid, topic, payload, m_qos, m_retain, props, expires) in rows
        ]

    async def _read_queue_rows(self, client_id: str, after_seq: int, limit: int) -> list:
        """Rows of ``_READ_QUEUE``, seeing every write issued before the call.

        Normally the writes are committed first. While out of space they cannot be, and a
        session must still get what is stored: the unwritten batches are then applied to
        what the database returns (``_read_queue_unwritten``) instead of waiting.
        """
        while True:
            if self._space_error is not None and self._failure is None:
                return await self._run(
                    self._read_queue_unwritten, client_id, after_seq, limit, self._unwritten()
                )
            if self._dirty or self._task is not None or self._failure is not None:
                done = self.commit()
                if not done.done():
                    space = asyncio.get_running_loop().create_future()
                    self._space_waiters.append(space)
                    try:
                        await asyncio.wait((done, space), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        if space in self._space_waiters:
                            self._space_waiters.remove(space)
                    if not done.done():
                        continue  # the commit ran out of space: read around it
                done.result()  # raises if the store failed
            return await self._fetch(_READ_QUEUE, (client_id, after_seq, limit))

    def _unwritten(self) -> list[tuple]:
        """Every batch not known to be on disk, oldest first (while out of space).

        Pending writes are sealed into a batch of their own, so that no write can change
        what the database thread reads; their commit waiters still wait for it.
        """
        if self._dirty:
            self._retry.append(self._take_batch())
        return self._attempt + self._retry

    def _read_queue_unwritten(self, client_id: str, after_seq: int, limit: int, batches: list[tuple]) -> list:
        """``_READ_QUEUE`` as if ``batches`` were written (database thread).

        Applying a batch that did get written in the meantime again changes nothing: each
        write is absolute (insert or replace, delete, set state), so this is exact either way.
        """
        conn = self._connection()
        rows: dict[int, list] = {}
        bound: int | None = None  # rows beyond the database's window are unknown
        if not any(client_id in batch[2] for batch in batches):  # else a batch wipes them
            removals = sum(
                1 for batch in batches for (c, _), op in batch[5].items() if c == client_id and op[0] == _DELETE
            )
            window = limit + removals  # enough for ``limit`` rows to survive the deletes
            found = conn.execute(_READ_QUEUE, (client_id, after_seq, window)).fetchall()
            rows = {row[0]: list(row) for row in found}
            if len(found) >= window:
                bound = found[-1][0]
        new_messages: dict[int, tuple] = {}
        for (stored, refs, deleted_clients, _, _, queue, *_) in batches:
            new_messages.update((mid, row) for mid, row in stored.items() if refs[mid] > 0)
            if client_id in deleted_clients:
                rows.clear()
            for (c, seq), op in queue.items():
                if c != client_id or seq <= after_seq:
                    continue
                if op[0] == _INSERT:  # [kind, message_id, qos, retain, sub_ids, state, packet_id, ...]
                    rows[seq] = [seq, op[2], op[3], op[4], op[5], op[6], op[1]]
                elif op[0] == _UPDATE:
                    row = rows.get(seq)
                    if row is not None:
                        row[4], row[5] = op[1], op[2]
                else:
                    rows.pop(seq, None)
        seqs = sorted(seq for seq in rows if bound is None or seq <= bound)[:limit]
        missing = [rows[seq][6] for seq in seqs if len(rows[seq]) == 7 and rows[seq][6] not in new_messages]
        if missing:
            marks = ",".join("?" * len(missing))
            for found_row in conn.execute(
                "SELECT id, topic, payload, qos, retain, properties, expires_at FROM messages"
                f" WHERE id IN ({marks})", missing,
            ):
                new_messages[found_row[0]] = tuple(found_row)
        result = []
        for seq in seqs:
            row = rows[seq]
            if len(row) == 7:  # an entry of a batch: add its message, as the join would
                message = new_messages.get(row[6])
                if message is None:
                    continue
                row = row + list(message[1:])
            result.append(tuple(row))
        return result

    # ---- buffered writes -----------------------------------------------------------------
    def save_session(self, record: SessionRecord) -> None:
        self._dirty = True
        self._sessions[record.client_id] = (
            record.client_id,
            record.expiry_interval,
            record.protocol_level,
            record.disconnected_at,
        )

    def delete_session(self, client_id: str) -> None:
        # Everything pending for this client is superseded: the batch first
        # deletes all its rows, then applies what is recorded after this call.
        self._dirty = True
        self._deleted_clients.add(client_id)
        self._sessions.pop(client_id, None)
        for sub_key in [k for k in self._subscriptions if k[0] == client_id]:
            del self._subscriptions[sub_key]
        for inbound_key in [k for k in self._inbound if k[0] == client_id]:
            del self._inbound[inbound_key]
        for queue_key in [k for k in self._queue if k[0] == client_id]:
            op = self._queue.pop(queue_key)
            if op[0] == _INSERT:
                self._unref(op[1])

    def save_subscription(self, client_id: str, sub: SubscriptionRecord) -> None:
        self._dirty = True
        options = sub.options
        self._subscriptions[(client_id, sub.topic_filter)] = (
            client_id,
            sub.topic_filter,
            options.qos,
            bool(options.no_local),
            bool(options.retain_as_published),
            options.retain_handling,
            sub.subscription_id,
        )

    def delete_subscription(self, client_id: str, topic_filter: str) -> None:
        self._dirty = True
        self._subscriptions[(client_id, topic_filter)] = None

    def _row(self, message: Message) -> int:
        """The row of ``message``: the one it was stored or read as, or a new one."""
        message_id = self._rows.get(message)
        if message_id:
            return message_id
        properties = encode_properties(message.properties)
        payload = message.payload
        if type(payload) is not bytes:
            payload = bytes(payload)
        self._dirty = True
        self._next_id += 1
        message_id = self._next_id
        self._new_messages[message_id] = (
            message_id,
            message.topic,
            payload,
            message.qos,
            bool(message.retain),
            properties,
            message.expires_at,
        )
        self._new_refs[message_id] = 0
        self._rows.remember(message, message_id)
        return message_id

    def enqueue(self, client_id: str, entry: QueueEntry) -> None:
        message_id = self._row(entry.message)
        self._dirty = True
        key = (client_id, entry.seq)
        previous = self._queue.get(key)
        # An older row with this key may exist on disk only if the key was
        # deleted or updated in this batch (seqs are never reused otherwise).
        replaces = False
        if previous is not None:
            if previous[0] == _INSERT:
                self._unref(previous[1])
                replaces = previous[7]
            else:
                replaces = True
        self._queue[key] = [
            _INSERT,
            message_id,
            entry.qos,
            bool(entry.retain),
            encode_ints(entry.subscription_ids),
            entry.state,
            entry.packet_id,
            replaces,
        ]
        if message_id in self._new_refs:
            self._new_refs[message_id] += 1

    def update_entry(self, client_id: str, seq: int, state: int, packet_id: int | None) -> None:
        self._dirty = True
        key = (client_id, seq)
        previous = self._queue.get(key)
        if previous is None or previous[0] == _UPDATE:
            self._queue[key] = [_UPDATE, state, packet_id]
        elif previous[0] == _INSERT:  # not on disk yet: write the final state once
            previous[5] = state
            previous[6] = packet_id
        # after a delete: nothing to update

    def delete_entry(self, client_id: str, seq: int) -> None:
        self._dirty = True
        key = (client_id, seq)
        previous = self._queue.get(key)
        if previous is None or previous[0] == _UPDATE:
            self._queue[key] = [_DELETE]
        elif previous[0] == _INSERT:  # cancel-out: never reaches the disk
            self._unref(previous[1])
            if previous[7]:
                self._queue[key] = [_DELETE]
            else:
                del self._queue[key]

    def add_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        self._dirty = True
        self._inbound[(client_id, packet_id)] = True

    def remove_inbound_qos2(self, client_id: str, packet_id: int) -> None:
        # A pending add is dropped (never inserted). The delete itself is kept:
        # the id may also be on disk from an earlier batch (an add of an id
        # already stored is legal), and deleting a missing row writes nothing.
        self._dirty = True
        self._inbound[(client_id, packet_id)] = False

    def set_retained(self, topic: str, message: Message | None) -> None:
        row = self._row(message) if message is not None else 0
        self._dirty = True
        previous = self._retained.get(topic)
        if previous is not None:
            self._unref(previous)
        if not row:
            self._retained[topic] = None
        else:
            self._retained[topic] = row
            self._ref(row)

    # ---- writing one batch --------------------------------------------------------------
    async def _write(self, batches: list[tuple]) -> int | None:
        """Write batches in one transaction, in a single call to the database thread.

        Returns the free space left when a reserve is set (looked at in the same hop).
        """
        return await self._run(self._write_sync, batches)  # one thread hop, not one per statement

    def _write_sync(self, batches: list[tuple]) -> int | None:
        """Write batches (oldest first) in one transaction (database thread)."""
        work = [batch for batch in batches if not _nothing_to_write(batch)]
        if work:  # else everything cancelled out: no transaction at all
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for batch in work:
                    self._write_batch(conn, batch)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except Exception:  # the connection may be unusable; the failure is reported anyway
                        pass
                if isinstance(exc, Exception) and _is_out_of_space(exc):
                    self._compact_wal(conn)
                raise
            self.commits_done += 1
        return self._free_space() if self.min_free_space else None

    def _compact_wal(self, conn: sqlite3.Connection) -> None:
        """Out of space: try to give back what old page versions in the WAL hold.

        The WAL keeps every version of a page written since the last checkpoint; a
        checkpoint that completes truncates it. On a disk truly full of data it fails
        (the database file cannot grow) and changes nothing: SQLite keeps the WAL until
        every frame is copied.
        """
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass

    def _write_batch(self, conn: sqlite3.Connection, batch: tuple) -> None:
        """The statements of one batch, inside the caller's transaction.

        Order matters only where rows of different kinds meet: cascades of
        deleted sessions first (later writes of this batch re-create what they
        should), queue deletes before inserts (a reused key), and garbage
        collection last.
        """
        (new_messages, new_refs, deleted_clients, sessions, subscriptions,
         queue, inbound, retained, wills) = batch
        messages = [row for mid, row in new_messages.items() if new_refs[mid] > 0]
        collect = False  # did anything delete a reference to a message?
        if deleted_clients:
            clients = [(c,) for c in deleted_clients]
            for table in ("queue", "subscriptions", "inbound_qos2", "sessions"):
                conn.executemany(f"DELETE FROM {table} WHERE client_id = ?", clients)
            collect = True
        if messages:
            conn.executemany(
                "INSERT INTO messages (id, topic, payload, qos, retain, properties, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                messages,
            )
        if sessions:
            conn.executemany(
                "INSERT OR REPLACE INTO sessions"
                " (client_id, expiry_interval, protocol_level, disconnected_at)"
                " VALUES (?, ?, ?, ?)",
                list(sessions.values()),
            )
        if subscriptions:
            removed = [key for key, row in subscriptions.items() if row is None]
            saved = [row for row in subscriptions.values() if row is not None]
            if removed:
                conn.executemany(
                    "DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?", removed
                )
            if saved:
                conn.executemany(
                    "INSERT OR REPLACE INTO subscriptions (client_id, topic_filter, qos, no_local,"
                    " retain_as_published, retain_handling, subscription_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    saved,
                )
        if queue:
            deletes = []
            updates = []
            inserts = []
            for key, op in queue.items():
                kind = op[0]
                if kind == _INSERT:
                    if op[7]:
                        deletes.append(key)
                    inserts.append((key[0], key[1], op[1], op[2], op[3], op[4], op[5], op[6]))
                elif kind == _UPDATE:
                    updates.append((op[1], op[2], key[0], key[1]))
                else:
                    deletes.append(key)
            if deletes:
                conn.executemany(
                    "DELETE FROM queue WHERE client_id = ? AND seq = ?", deletes
                )
                collect = True
            if updates:
                conn.executemany(
                    "UPDATE queue SET state = ?, packet_id = ? WHERE client_id = ? AND seq = ?",
                    updates,
                )
            if inserts:
                conn.executemany(
                    "INSERT OR REPLACE INTO queue (client_id, seq, message_id, qos, retain,"
                    " subscription_ids, state, packet_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    inserts,
                )
        if inbound:
            removed = [key for key, present in inbound.items() if not present]
            added = [key for key, present in inbound.items() if present]
            if removed:
                conn.executemany(
                    "DELETE FROM inbound_qos2 WHERE client_id = ? AND packet_id = ?", removed
                )
            if added:
                conn.executemany(
                    "INSERT OR IGNORE INTO inbound_qos2 (client_id, packet_id) VALUES (?, ?)",
                    added,
                )
        if retained:
            cleared = [(topic,) for topic, mid in retained.items() if mid is None]
            kept = [(topic, mid) for topic, mid in retained.items() if mid is not None]
            if cleared:
                conn.executemany("DELETE FROM retained WHERE topic = ?", cleared)
            if kept:
                # An upsert, not INSERT OR REPLACE: REPLACE would not fire the GC trigger.
                conn.executemany(
                    "INSERT INTO retained (topic, message_id) VALUES (?, ?) ON CONFLICT (topic)"
                    " DO UPDATE SET message_id = excluded.message_id",
                    kept,
                )
            collect = True
        if wills:
            conn.executemany(
                "DELETE FROM wills WHERE client_id = ?", [(c,) for c, row in wills.items() if row is None]
            )
            conn.executemany(
                "INSERT OR REPLACE INTO wills (client_id, topic, payload, qos, retain, properties,"
                " expires_at, due) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(c, *row) for c, row in wills.items() if row is not None],
            )
        if collect:
            conn.execute(_GC)
            conn.execute("DELETE FROM temp.gc")

    # ---- open: checks, schema, corruption -------------------------------------------------
    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UnsupportedSchema(
                f"{self.path} has schema version {version}; this broker knows up to"
                f" {SCHEMA_VERSION}. Run a newer broker or restore an older backup."
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            log.info("%s: schema version %d", self.path, target)

    def _check_files(self) -> None:
        """Check the database read-only before opening it for writing (database thread).

        A read-only connection never checkpoints or deletes anything, so a
        damaged file stays exactly as found when it is moved aside.
        """
        wal = _sidecar(self.path, "-wal")
        if wal.exists():
            reason = _wal_header_problem(wal)
            if reason is not None:
                raise self._move_wal_aside(reason)
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            check = sqlite3.connect(uri, uri=True, timeout=self.lock_timeout)
            try:
                rows = check.execute("PRAGMA quick_check(5)").fetchall()
            finally:
                check.close()
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise self._move_aside(str(exc)) from exc
            if _is_busy(exc):
                raise DatabaseInUse(self._in_use_message()) from exc
            raise
        if rows != [("ok",)]:
            raise self._move_aside("; ".join(str(row[0]) for row in rows))

    def _in_use_message(self) -> str:
        return (
            f"{self.path} is locked by another process: is another broker running"
            " with the same data_dir?"
        )

    def _move_aside(self, reason: str) -> CorruptDatabase:
        """Rename the database and its -wal/-shm to broker.db.corrupt-<time>[-wal|-shm]."""
        target = _free_name(self.path, ".corrupt-" + time.strftime("%Y%m%dT%H%M%S"))
        moved = []
        for suffix in ("", "-wal", "-shm"):
            source = _sidecar(self.path, suffix)
            if source.exists():
                destination = _sidecar(target, suffix)
                os.replace(source, destination)
                moved.append(str(destination))
        log.error("%s is corrupt (%s); moved to %s", self.path, reason, ", ".join(moved))
        return CorruptDatabase(
            f"database {self.path} is corrupt ({reason}). It was moved aside to {target}"
            f" (nothing was deleted). Restore a backup to {self.path}, or start without"
            " it to begin with an empty store."
        )

    def _move_wal_aside(self, reason: str) -> CorruptDatabase:
        """A write-ahead log SQLite did not write: keep it, refuse this start.

        SQLite would silently discard such a log (and with it any committed
        transactions it held); the operator must know. The database itself is
        left in place, so the next start uses it as it is.
        """
        wal = _sidecar(self.path, "-wal")
        target = _free_name(wal, ".corrupt-" + time.strftime("%Y%m%dT%H%M%S"))
        os.replace(wal, target)
        shm = _sidecar(self.path, "-shm")
        if shm.exists():
            os.replace(shm, _free_name(shm, ".corrupt-" + time.strftime("%Y%m%dT%H%M%S")))
        log.error("%s: write-ahead log is damaged (%s); moved to %s", self.path, reason, target)
        return CorruptDatabase(
            f"the write-ahead log of {self.path} is damaged ({reason}). It was moved aside to"
            f" {target} (nothing was deleted); transactions it held are not in the database."
            f" The next start uses {self.path} as it is."
        )

    # ---- operations: backup and compaction ---------------------------------------------
    async def backup(self, destination: str | os.PathLike) -> None:
        """Copy the committed database to a new file with SQLite's online backup API.

        Runs on the database thread between group commits, so the copy is one consistent
        state, taken while the broker serves (the exclusive lock keeps other processes out).
        """

        def copy() -> None:
            target = sqlite3.connect(destination)
            try:
                self._connection().backup(target)
            finally:
                target.close()

        await self._run(copy)

    async def compact(self, pages_per_step: int = COMPACT_PAGES_PER_STEP) -> bool:
        """Give freed pages back to the file system and empty the WAL; True if it wrote.

        Called when the broker has been quiet for a while after traffic (never on a
        timer while idle), so a burst leaves neither a large database nor a large WAL
        behind on an SD card. A file created before auto_vacuum was set is vacuumed once.
        Each step is one call to the database thread: group commits run between them.
        """
        if self._failure is not None:
            return False
        freelist = (await self._fetch("PRAGMA freelist_count"))[0][0]
        wal = _sidecar(self.path, "-wal")
        wal_size = wal.stat().st_size if wal.exists() else 0
        if freelist < COMPACT_MIN_FREE_PAGES and wal_size == 0:
            return False
        if freelist >= COMPACT_MIN_FREE_PAGES:
            if (await self._fetch("PRAGMA auto_vacuum"))[0][0] == 0:
                await self._run(self._script, "VACUUM;")  # switches the file to incremental auto_vacuum
            previous = -1
            while 0 < freelist != previous:
                # (executescript runs the pragma to completion; a cursor would free one page per step.)
                await self._run(self._script, f"PRAGMA incremental_vacuum({pages_per_step});")
                previous, freelist = freelist, (await self._fetch("PRAGMA freelist_count"))[0][0]
        await self._run(self._script, "PRAGMA wal_checkpoint(TRUNCATE);")
        return True

    def _script(self, sql: str) -> None:
        self._connection().executescript(sql)

    # ---- statistics ------------------------------------------------------------------
    async def message_count(self) -> int:
        await self._flush()
        rows = await self._fetch("SELECT COUNT(*) FROM messages")
        return rows[0][0]


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _free_name(path: Path, suffix: str) -> Path:
    """path+suffix, or path+suffix-N if that exists (two failures in one second)."""
    candidate = _sidecar(path, suffix)
    n = 1
    while candidate.exists() or _sidecar(candidate, "-wal").exists():
        candidate = _sidecar(path, f"{suffix}-{n}")
        n += 1
    return candidate


def _wal_header_problem(wal: Path) -> str | None:
    """Why this -wal file cannot have been written by SQLite, or None if it may have been.

    An empty log, or a header of zeros (a crash while the file was being
    extended, before anything was committed to it), is normal. A torn tail
    is normal too: SQLite's frame checksums make it fall back to the last
    complete commit. Anything else in the header means the file was damaged.
    """
    with open(wal, "rb") as f:
        header = f.read(32)
    if not header or header.count(0) == len(header):
        return None
    if len(header) < 32:
        return f"{len(header)}-byte header"
    magic, version = struct.unpack(">II", header[:8])
    if magic not in _WAL_MAGICS or version != 3007000:
        return f"bad header magic {magic:#010x}"
    # Header checksum over the first 24 bytes (SQLite's walChecksumBytes).
    big_endian = magic & 1
    fmt = ">6I" if big_endian else "<6I"
    words = struct.unpack(fmt, header[:24])
    s0 = s1 = 0
    for i in range(0, 6, 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    if (s0, s1) != struct.unpack(">II", header[24:32]):
        return "bad header checksum"
    return None


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return False
    return (code & 0xFF) in _CORRUPTION_CODES


def _nothing_to_write(batch: tuple) -> bool:
    """Did every write of this batch cancel out (and no stored message stay referenced)?"""
    new_messages, new_refs, *rows = batch
    return not any(rows) and not any(new_refs[mid] > 0 for mid in new_messages)


def _is_out_of_space(exc: Exception) -> bool:
    """SQLITE_FULL (SQLite's word for ENOSPC on a write), or ENOSPC/EDQUOT itself."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and (code & 0xFF) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _BUSY_CODES
