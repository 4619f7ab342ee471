"""SQLite-only behaviour: file settings, group commit internals, damaged files, repairs."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.config import Config
from broker.protocol.packets import SubscriptionOptions
from broker.message import Message
from broker.storage.base import SENT, CorruptDatabase, QueueEntry, SessionRecord, SubscriptionRecord
from broker.storage.factory import create_storage, open_storage
from broker.storage.memory import MemoryStorage
from broker.storage.sqlite import (
    SCHEMA_VERSION,
    DatabaseInUse,
    SqliteStorage,
    StorageFailed,
    UnsupportedSchema,
)

from .helpers import SqliteFiles, run_async


def message(topic: str = "t", payload: bytes = b"x") -> Message:
    return Message(topic, payload, 1, False)


async def fill(store: SqliteStorage, client_id: str, count: int, payload: bytes = b"p") -> None:
    store.save_session(SessionRecord(client_id, 3600, 5))
    for seq in range(1, count + 1):
        m = message(f"{client_id}/{seq}", payload)
        store.enqueue(client_id, QueueEntry(seq, m, 1))
    await store.commit()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


async def sql(store: SqliteStorage, statement: str) -> list:
    """Rows of one statement, run on the store's own database thread and connection."""
    return await store._fetch(statement)


async def total_changes(store: SqliteStorage) -> int:
    return await store._run(lambda: store._connection().total_changes)


def files_named(directory: Path, prefix: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(prefix))


# ---- file settings and schema ----------------------------------------------------------


@pytest.mark.parametrize("sync, level", [("full", 2), ("normal", 1), ("off", 0)])
@run_async
async def test_wal_and_synchronous_setting(sqlite_backend: SqliteFiles, sync: str, level: int) -> None:
    async with sqlite_backend.opened(sync=sync) as store:
        assert (await sql(store, "PRAGMA journal_mode"))[0][0] == "wal"
        assert (await sql(store, "PRAGMA synchronous"))[0][0] == level
        await fill(store, "c", 3)
    async with sqlite_backend.opened(sync=sync) as store:
        (record,) = await store.load_sessions()
        assert record.queued_count == 3


def test_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync"):
        SqliteStorage(tmp_path / "broker.db", sync="sometimes")


@run_async
async def test_schema_has_the_documented_tables_and_version(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened():
        pass
    conn = raw(sqlite_backend.db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {
            table: [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            for table in ("sessions", "subscriptions", "messages", "queue", "inbound_qos2",
                          "retained")
        }
        primary_keys = {
            table: [row[1] for row in sorted(conn.execute(f"PRAGMA table_info({table})"),
                                             key=lambda r: r[5]) if row[5]]
            for table in columns
        }
    finally:
        conn.close()
    assert columns == {
        "sessions": ["client_id", "expiry_interval", "protocol_level", "disconnected_at"],
        "subscriptions": ["client_id", "topic_filter", "qos", "no_local", "retain_as_published",
                          "retain_handling", "subscription_id"],
        "messages": ["id", "topic", "payload", "qos", "retain", "properties", "expires_at"],
        "queue": ["client_id", "seq", "message_id", "qos", "retain", "subscription_ids", "state",
                  "packet_id"],
        "inbound_qos2": ["client_id", "packet_id"],
        "retained": ["topic", "message_id"],
    }
    assert primary_keys == {
        "sessions": ["client_id"],
        "subscriptions": ["client_id", "topic_filter"],
        "messages": ["id"],
        "queue": ["client_id", "seq"],
        "inbound_qos2": ["client_id", "packet_id"],
        "retained": ["topic"],
    }


@run_async
async def test_properties_are_stored_as_data_not_pickle(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened() as store:
        await fill(store, "c", 0)
        m = Message("t", b"", 1, False, {0x26: [("k", "v")], 0x03: "ct"})
        store.enqueue("c", QueueEntry(1, m, 1))
        await store.commit()
    conn = raw(sqlite_backend.db_path)
    try:
        (blob,) = conn.execute("SELECT properties FROM messages").fetchone()
    finally:
        conn.close()
    # key 0x03, tag str, "ct"; key 0x26, tag pairs, one pair ("k", "v")
    assert blob == b"\x03\x02\x02ct\x26\x05\x01\x01k\x01v"


@run_async
async def test_newer_schema_is_refused_and_the_file_left_alone(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened() as store:
        await fill(store, "c", 2)
    conn = raw(sqlite_backend.db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(UnsupportedSchema):
        await sqlite_backend.create().open()
    assert sqlite_backend.db_path.exists()
    assert files_named(sqlite_backend.directory, "broker.db.corrupt") == []


# ---- group commit and the cancel-out optimisation ---------------------------------------------


@run_async
async def test_commits_during_a_commit_in_flight_share_one_next_transaction(
    sqlite_backend: SqliteFiles,
) -> None:
    async with sqlite_backend.opened() as store:
        store.save_session(SessionRecord("first", 1, 5))
        first = store.commit()
        await asyncio.sleep(0)  # the commit task takes the batch and starts writing
        before = store.commits_done
        later = []
        for n in range(10):
            store.save_session(SessionRecord(f"later{n}", 1, 5))
            later.append(store.commit())
        idle = store.commit()  # no write of its own: still waits for the writes before it
        await first
        assert store.commits_done == before + 1
        assert not any(f.done() for f in later)  # their writes are in the next batch
        await asyncio.gather(*later, idle)
        assert store.commits_done == before + 2
        assert len(await store.load_sessions()) == 11


@run_async
async def test_concurrent_commits_make_one_transaction(sqlite_backend: SqliteFiles) -> None:
    async def publisher(store: SqliteStorage, n: int) -> None:
        m = message(f"t/{n}", b"%d" % n)
        store.enqueue(f"c{n}", QueueEntry(1, m, 1))
        await store.commit()

    async with sqlite_backend.opened() as store:
        for n in range(50):
            store.save_session(SessionRecord(f"c{n}", 60, 5))
        await store.commit()
        before = store.commits_done
        await asyncio.gather(*(publisher(store, n) for n in range(50)))
        assert 1 <= store.commits_done - before <= 2  # group commit (two at worst)


@run_async
async def test_commit_with_nothing_new_waits_for_the_commit_in_flight(
    sqlite_backend: SqliteFiles,
) -> None:
    async with sqlite_backend.opened() as store:
        store.save_session(SessionRecord("c", 1, 5))
        first = store.commit()
        await asyncio.sleep(0)
        second = store.commit()  # nothing new was written
        assert not second.done()
        await second
        assert first.done() and store.commits_done == 1


@run_async
async def test_cancelled_out_writes_never_reach_the_disk(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened() as store:
        await fill(store, "c", 1)
        changes = await total_changes(store)
        commits = store.commits_done
        m = message()
        store.enqueue("c", QueueEntry(2, m, 1))
        store.update_entry("c", 2, SENT, 7)
        store.update_entry("c", 2, SENT, 8)
        store.delete_entry("c", 2)
        store.add_inbound_qos2("c", 9)
        store.remove_inbound_qos2("c", 9)
        await store.commit()
        assert await total_changes(store) == changes  # no row inserted, updated or deleted
        assert await store.message_count() == 1
        assert [e.seq for e in await store.read_queue("c", 0, 10)] == [1]
        # Only the kept delete of inbound id 9 (a no-op on disk) made a transaction.
        assert store.commits_done <= commits + 1

        store.enqueue("c", QueueEntry(9, message(), 1))  # stored, then nothing refers to it
        store.delete_entry("c", 9)
        await store.commit()
        assert await total_changes(store) == changes


@run_async
async def test_many_messages_in_one_batch(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened() as store:
        await fill(store, "c", 5000, payload=b"x" * 100)
        (record,) = await store.load_sessions()
        assert (record.queued_count, record.queued_bytes, record.last_seq) == (5000, 500_000, 5000)
        for seq in range(1, 4001):
            store.update_entry("c", seq, SENT, seq % 65535 + 1)
            store.delete_entry("c", seq)
        await store.commit()
        assert await store.message_count() == 1000
        page = await store.read_queue("c", 0, 3)
        assert [e.seq for e in page] == [4001, 4002, 4003]


# ---- failures --------------------------------------------------------------------------------------


@run_async
async def test_a_failed_commit_is_reported_and_stops_the_store(sqlite_backend: SqliteFiles) -> None:
    store = sqlite_backend.create()
    await store.open()
    await fill(store, "c", 1)
    taken = message("taken", b"T")
    store.enqueue("c", QueueEntry(2, taken, 1))
    await store.commit()
    # A failure that is not lack of space (here a broken invariant: a message id in use).
    clash = message("clash", b"C")
    store.enqueue("c", QueueEntry(3, clash, 1))
    (clash_id, row), = store._new_messages.items()
    del store._new_messages[clash_id]
    taken_id = clash_id - 1  # the row of "taken", written by the previous commit
    store._new_messages[taken_id] = (taken_id, *row[1:])
    store._new_refs[taken_id] = 1
    with pytest.raises(StorageFailed) as caught:
        await store.commit()
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert not store.full  # not a matter of space
    with pytest.raises(StorageFailed):
        await store.commit()
    with pytest.raises(StorageFailed):
        await store.read_queue("c", 0, 10)
    store.save_session(SessionRecord("after", 1, 5))
    with pytest.raises(StorageFailed):
        await store.close()
    assert store._conn is None and store._thread is None  # closed anyway, thread stopped

    async with sqlite_backend.opened() as store:
        (record,) = await store.load_sessions()  # the failed batch left no trace
        assert record.client_id == "c" and record.queued_count == 2


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def disk_full(store: SqliteStorage) -> int:
    """Let the database grow no more (SQLITE_FULL, as on a full disk); returns its page count."""
    pages = (await sql(store, "PRAGMA page_count"))[0][0]
    await sql(store, f"PRAGMA max_page_count = {pages}")
    return pages


@run_async
async def test_out_of_space_keeps_the_writes_and_retries_until_they_fit(
    sqlite_backend: SqliteFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker")
    async with sqlite_backend.opened(retry_interval=0.02) as store:
        await fill(store, "c", 2)
        await disk_full(store)
        big = message("big", b"B" * 200_000)
        store.enqueue("c", QueueEntry(3, big, 1))
        first = store.commit()
        await until(lambda: store.full)
        store.delete_entry("c", 1)  # written while full: goes with the retry, after the big one
        second = store.commit()
        with pytest.raises(TimeoutError):  # several retries fail meanwhile
            await asyncio.wait_for(asyncio.shield(asyncio.gather(first, second)), 0.3)
        assert store.full
        # Reads do not wait for the disk: they see the writes that are not on it yet.
        page = await asyncio.wait_for(store.read_queue("c", 0, 10), 5)
        assert [(e.seq, e.message.payload[:1]) for e in page] == [(2, b"p"), (3, b"B")]
        store.update_entry("c", 2, SENT, 9)
        assert [(e.seq, e.state) for e in await store.read_queue("c", 0, 1)] == [(2, SENT)]
        assert not first.done() and not second.done()
        assert sum("out of disk space" in r.getMessage() for r in caplog.records) == 1  # once

        await sql(store, "PRAGMA max_page_count = 1073741823")  # space is back
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert not store.full
        assert sum("available again" in r.getMessage() for r in caplog.records) == 1
        assert await store.message_count() == 2
    async with sqlite_backend.opened() as store:
        assert [(e.seq, e.state) for e in await store.read_queue("c", 0, 10)] == [(2, SENT), (3, 0)]


@run_async
async def test_close_while_out_of_space_gives_up_and_stops_the_thread(sqlite_backend: SqliteFiles) -> None:
    store = sqlite_backend.create(retry_interval=0.02)
    await store.open()
    await fill(store, "c", 1)
    await disk_full(store)
    big = message("big", b"B" * 200_000)
    store.enqueue("c", QueueEntry(2, big, 1))
    pending = store.commit()
    await until(lambda: store.full)
    with pytest.raises(StorageFailed):
        await store.close()  # one last attempt, then the unwritten batch is given up
    with pytest.raises(StorageFailed):
        await pending  # never reported durable
    assert store._thread is None
    async with sqlite_backend.opened() as store:
        assert [e.seq for e in await store.read_queue("c", 0, 10)] == [1]


@run_async
async def test_below_the_free_space_reserve_the_store_is_full_but_commits(
    sqlite_backend: SqliteFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker")
    free = shutil.disk_usage(sqlite_backend.directory).free
    store = sqlite_backend.create(min_free_space=free * 4, retry_interval=0.02)
    await store.open()
    assert store.full  # known from the start
    await fill(store, "c", 3)  # the reserve is for this: writes of work already accepted
    assert store.full
    assert [e.seq for e in await store.read_queue("c", 0, 10)] == [1, 2, 3]
    store.min_free_space = 1  # as if space had been freed: noticed without any commit
    await until(lambda: not store.full)
    assert sum("below min_free_space" in r.getMessage() for r in caplog.records) == 1
    assert sum("free again" in r.getMessage() for r in caplog.records) == 1
    await store.close()


@run_async
async def test_second_broker_on_the_same_file_is_refused(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened() as store:
        await fill(store, "c", 1)
        with pytest.raises(DatabaseInUse, match="another broker"):
            await sqlite_backend.create(lock_timeout=0.05).open()
        await fill(store, "d", 1)  # the first one is unaffected
        assert len(await store.load_sessions()) == 2
    assert files_named(sqlite_backend.directory, "broker.db.corrupt") == []


@run_async
async def test_open_repairs_rows_left_inconsistent(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened() as store:
        await fill(store, "c", 2)
    conn = raw(sqlite_backend.db_path)
    conn.execute("INSERT INTO messages (id, topic, payload, qos, retain) VALUES (100, 'o', x'00', 1, 0)")
    conn.execute("INSERT INTO queue (client_id, seq, message_id, qos, retain, state)"
                 " VALUES ('c', 9, 555, 1, 0, 0)")  # refers to a missing message
    conn.execute("INSERT INTO queue (client_id, seq, message_id, qos, retain, state)"
                 " VALUES ('ghost', 1, 1, 1, 0, 0)")  # no such session
    conn.execute("INSERT INTO subscriptions VALUES ('ghost', 'f', 0, 0, 0, 0, NULL)")
    conn.close()
    async with sqlite_backend.opened() as store:
        (record,) = await store.load_sessions()
        assert (record.queued_count, record.last_seq) == (2, 2)
        assert await store.message_count() == 2
        assert await store.read_queue("ghost", 0, 10) == []
        # New rows continue after the highest kept id: the kept message 100 stays intact.
        store.enqueue("c", QueueEntry(3, message("new", b"n"), 1))
        await store.commit()
        assert await store.message_count() == 3


# ---- damaged files --------------------------------------------------------------------------------


@run_async
async def test_garbage_database_is_moved_aside_not_deleted(sqlite_backend: SqliteFiles) -> None:
    garbage = os.urandom(3 * 4096)
    sqlite_backend.db_path.write_bytes(garbage)
    shm = sqlite_backend.directory / "broker.db-shm"
    shm.write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptDatabase) as caught:
        await sqlite_backend.create().open()
    (moved,) = files_named(sqlite_backend.directory, "broker.db.corrupt-")[:1]
    assert not sqlite_backend.db_path.exists()
    assert moved.read_bytes() == garbage
    assert Path(str(moved) + "-shm").exists() and not shm.exists()
    message_text = str(caught.value)
    assert str(sqlite_backend.db_path) in message_text and str(moved) in message_text


@run_async
async def test_damaged_pages_are_found_by_quick_check(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened() as store:
        await fill(store, "c", 300, payload=b"y" * 200)
    data = bytearray(sqlite_backend.db_path.read_bytes())
    page = 4096
    assert len(data) > 10 * page
    data[2 * page:len(data) - page] = os.urandom(len(data) - 3 * page)  # keep page 1 (header)
    sqlite_backend.db_path.write_bytes(bytes(data))
    with pytest.raises(CorruptDatabase, match="corrupt"):
        await sqlite_backend.create().open()
    moved = files_named(sqlite_backend.directory, "broker.db")
    # Only the moved-aside files are left: broker.db.corrupt-<time> and its -wal/-shm if any.
    assert moved[0].name.startswith("broker.db.corrupt-")
    assert all(p.name.startswith(moved[0].name) for p in moved)
    assert moved[0].read_bytes() == bytes(data)
    assert not sqlite_backend.db_path.exists()


@run_async
async def test_garbage_wal_is_moved_aside_and_the_database_kept(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened() as store:
        await fill(store, "c", 3)  # checkpointed into broker.db on close
    wal = sqlite_backend.directory / "broker.db-wal"
    garbage = b"\x01" + os.urandom(8191)
    wal.write_bytes(garbage)
    with pytest.raises(CorruptDatabase) as caught:
        await sqlite_backend.create().open()
    (moved,) = files_named(sqlite_backend.directory, "broker.db-wal.corrupt-")
    assert moved.read_bytes() == garbage and not wal.exists()
    assert str(moved) in str(caught.value)
    assert sqlite_backend.db_path.exists()
    async with sqlite_backend.opened() as store:  # the next start uses the database as it is
        (record,) = await store.load_sessions()
        assert record.queued_count == 3


@run_async
async def test_zeroed_wal_header_is_an_ordinary_crash(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened() as store:
        await fill(store, "c", 3)
    (sqlite_backend.directory / "broker.db-wal").write_bytes(b"\x00" * 4096)
    async with sqlite_backend.opened() as store:
        (record,) = await store.load_sessions()
        assert record.queued_count == 3


def crash_image(source: Path, target_dir: Path) -> Path:
    """Copy broker.db and its WAL as they are on disk now, as a power cut would leave them."""
    target_dir.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(str(source) + suffix, target_dir / ("broker.db" + suffix))
    return target_dir / "broker.db"


@run_async
async def test_torn_wal_tail_falls_back_to_the_last_complete_commit(tmp_path: Path) -> None:
    live = SqliteFiles(tmp_path / "live")
    live.directory.mkdir()
    async with live.opened() as store:
        await fill(store, "early", 2)
        await fill(store, "late", 20, payload=b"z" * 3000)  # several WAL frames
        intact = crash_image(live.db_path, tmp_path / "intact")
        torn = crash_image(live.db_path, tmp_path / "torn")
    wal = Path(str(torn) + "-wal")
    with open(wal, "r+b") as f:
        f.truncate(wal.stat().st_size - 100)  # the last frame (the commit record) is torn

    async with SqliteFiles(intact.parent).opened() as store:
        assert [r.client_id for r in await store.load_sessions()] == ["early", "late"]
    async with SqliteFiles(torn.parent).opened() as store:
        (record,) = await store.load_sessions()
        assert record.client_id == "early" and record.queued_count == 2
        assert await store.message_count() == 2
        assert (await sql(store, "PRAGMA quick_check"))[0][0] == "ok"


# ---- factory ----------------------------------------------------------------------------------------


@run_async
async def test_factory_opens_sqlite_in_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    store = await open_storage(Config(backend="sqlite", data_dir=str(data_dir)))
    try:
        assert isinstance(store, SqliteStorage)
        assert store.path == data_dir / "broker.db" and store.sync == "full"
        await fill(store, "c", 1)
    finally:
        await store.close()
    assert (data_dir / "broker.db").exists()


@run_async
async def test_factory_memory_and_unknown(tmp_path: Path) -> None:
    store = await open_storage(Config(backend="memory", data_dir=str(tmp_path / "unused")))
    assert isinstance(store, MemoryStorage)
    await store.close()
    assert not (tmp_path / "unused").exists()
    with pytest.raises(ValueError, match="backend"):
        create_storage(Config(backend="postgres"))
    relaxed = create_storage(Config(data_dir=str(tmp_path)), sync="normal")
    assert isinstance(relaxed, SqliteStorage) and relaxed.sync == "normal"


def test_subscription_record_shapes_stay_plain(tmp_path: Path) -> None:
    """Guard for the engine: records come back as the dataclasses of base.py."""
    async def body() -> None:
        store = SqliteStorage(tmp_path / "broker.db")
        await store.open()
        store.save_session(SessionRecord("c", 1, 5))
        store.save_subscription("c", SubscriptionRecord("f", SubscriptionOptions(1, True), 2))
        (record,) = await store.load_sessions()
        await store.close()
        (sub,) = record.subscriptions
        assert type(sub) is SubscriptionRecord and type(sub.options) is SubscriptionOptions
        assert sub.options.no_local is True and sub.options.retain_as_published is False

    asyncio.run(body())


# ---- the database thread ------------------------------------------------------------------------


def sqlite_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edgemq-sqlite")]


@run_async
async def test_the_database_thread_lives_from_open_to_close(sqlite_backend: SqliteFiles) -> None:
    before = sqlite_threads()
    store = sqlite_backend.create()
    await store.open()
    (thread,) = [t for t in sqlite_threads() if t not in before]
    assert not thread.daemon  # a forgotten close() is noticed, never silently killed
    await fill(store, "c", 2)
    await store.close()
    assert not thread.is_alive()


@run_async
async def test_a_failed_open_stops_the_database_thread(tmp_path: Path) -> None:
    before = sqlite_threads()
    path = tmp_path / "broker.db"
    conn = raw(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(UnsupportedSchema):
        await SqliteStorage(path).open()
    assert sqlite_threads() == before


@run_async
async def test_errors_on_the_database_thread_reach_the_caller(sqlite_backend: SqliteFiles) -> None:
    async with sqlite_backend.opened() as store:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await sql(store, "SELECT * FROM nowhere")
        assert await sql(store, "SELECT 1") == [(1,)]  # the thread goes on serving


@run_async
async def test_close_lets_queue_reads_under_way_finish(sqlite_backend: SqliteFiles) -> None:
    """A session reading its queue as the broker stops: the read completes, then the store closes."""
    store = sqlite_backend.create()
    await store.open()
    await fill(store, "c", 3)
    store.save_session(SessionRecord("other", 60, 5))  # so that the read waits for a commit first
    reading = asyncio.ensure_future(store.read_queue("c", 0, 10))
    await asyncio.sleep(0)  # the read is under way
    await store.close()
    assert [e.seq for e in await reading] == [1, 2, 3]
