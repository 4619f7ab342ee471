"""``python -m broker inspect``: the age of the oldest queued message, per session and overall,
from real traffic: while the broker runs (RAM queues and stored ones) and from the file when
it is stopped, also for a database written before arrival times were kept (schema 2)."""

from __future__ import annotations

import json
import socket
import sqlite3
import struct
import time
from pathlib import Path

from ops_helpers import close, connect, numbered, offline_subscriber, publish, run_broker_command, wait_until

UNLIMITED = "[limits]\nmax_queued_messages = 0\n"


def _inspect(data_dir: Path) -> dict:
    result = run_broker_command("inspect", "--json", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _timed_inspect(data_dir: Path) -> tuple[float, dict, float]:
    before = time.time()
    snapshot = _inspect(data_dir)
    return before, snapshot, time.time()


def _string(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


def _stalled_subscriber(port: int, client_id: str, topic: str) -> socket.socket:
    """A clean session (queue in RAM only) subscribed at QoS 1 that never acknowledges."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _string(client_id)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK accepted
    body = struct.pack("!H", 1) + _string(topic) + b"\x01"
    sock.sendall(bytes([0x82, len(body)]) + body)
    assert sock.recv(5) == b"\x90\x03\x00\x01\x01"  # SUBACK, QoS 1 granted
    return sock


def _ages(snapshot: dict) -> dict[str, float | None]:
    return {s["client_id"]: s["oldest_queued_age"] for s in snapshot["sessions"]}


def _assert_age(age: float | None, received: tuple[float, float], asked: tuple[float, float]) -> None:
    """The message arrived within ``received``; the age was measured within ``asked``."""
    assert age is not None
    assert asked[0] - received[1] - 0.01 <= age <= asked[1] - received[0] + 0.01, (age, received, asked)


def test_oldest_queued_age_running_and_stopped(broker_factory) -> None:
    broker = broker_factory(config=UNLIMITED)
    offline_subscriber(broker.port, "slow", "age/#")
    first = time.time()
    publish(broker.port, "age/1", numbered(5, 20))
    first = (first, time.time())
    stalled = _stalled_subscriber(broker.port, "stalled", "later/#")
    drained = connect(broker.port, "drained", clean=False)
    drained.subscribe("later/#", 1)
    wait_until(lambda: _inspect(broker.data_dir)["sessions"] and any(
        s["client_id"] == "drained" and s["subscriptions"] == 1 for s in _inspect(broker.data_dir)["sessions"]
    ), what="drained's subscription")
    second = time.time()
    publish(broker.port, "later/1", numbered(3, 20))
    publish(broker.port, "age/2", numbered(2, 20))  # newer: slow's oldest stays the first ones
    second = (second, time.time())
    try:
        before, running, after = _timed_inspect(broker.data_dir)
        sessions = {s["client_id"]: s for s in running["sessions"]}
        assert sessions["slow"]["queued_messages"] == 7
        _assert_age(sessions["slow"]["oldest_queued_age"], first, (before, after))
        # The clean session holds its queue in RAM only (sent, never acknowledged).
        assert sessions["stalled"]["queued_messages"] == 3
        _assert_age(sessions["stalled"]["oldest_queued_age"], second, (before, after))
        assert sessions["drained"]["queued_messages"] == 0
        wait_until(lambda: _ages(_inspect(broker.data_dir))["drained"] is None, what="drained acknowledging")
        assert running["oldest_queued_age"] == max(
            sessions["slow"]["oldest_queued_age"], sessions["stalled"]["oldest_queued_age"]
        )
        table = run_broker_command("inspect", "--data-dir", str(broker.data_dir)).stdout
        assert "oldest queued:" in table and "oldest" in table.splitlines()[7]
        rows = {line.split()[0]: line.split() for line in table.splitlines()[8:]}
        assert rows["drained"][5] == "-"
        assert rows["slow"][5].endswith("s") and rows["slow"][5] != "-"
    finally:
        stalled.close()
        close(drained)
    broker.stop()

    before, stopped, after = _timed_inspect(broker.data_dir)
    assert stopped["source"].startswith("database file")
    ages = _ages(stopped)
    _assert_age(ages["slow"], first, (before, after))
    assert "stalled" not in ages  # a clean session is not stored
    assert stopped["oldest_queued_age"] == ages["slow"]


def test_schema_2_database_reports_unknown_ages_then_migrates(broker_factory) -> None:
    broker = broker_factory(config=UNLIMITED)
    offline_subscriber(broker.port, "old", "old/#")
    publish(broker.port, "old/1", numbered(4, 10))
    broker.stop()
    # Make the file what a broker of schema 2 wrote: no received_at column.
    db = sqlite3.connect(broker.data_dir / "broker.db", isolation_level=None)
    db.execute("ALTER TABLE messages DROP COLUMN received_at")
    db.execute("PRAGMA user_version = 2")
    db.close()

    stopped = _inspect(broker.data_dir)
    [old] = stopped["sessions"]
    assert (old["queued_messages"], old["oldest_queued_age"]) == (4, None)
    assert stopped["oldest_queued_age"] is None
    table = run_broker_command("inspect", "--data-dir", str(broker.data_dir)).stdout
    assert "oldest queued:     unknown" in table

    broker.start()  # migrates to schema 3; the old rows keep no arrival time
    offline_subscriber(broker.port, "new", "new/#")
    sent = time.time()
    publish(broker.port, "new/1", numbered(2, 10))
    sent = (sent, time.time())
    before, running, after = _timed_inspect(broker.data_dir)
    ages = _ages(running)
    assert ages["old"] is None
    _assert_age(ages["new"], sent, (before, after))
    assert running["oldest_queued_age"] is None  # the unknown ones are older than any known
    # Delivering the old messages leaves the session with known ages only.
    received: list[bytes] = []
    old_client = connect(broker.port, "old", clean=False, on_message=lambda m: received.append(m.payload))
    wait_until(lambda: len(received) == 4, what="the old queue delivered")
    close(old_client)
    wait_until(lambda: _inspect(broker.data_dir)["oldest_queued_age"] is not None, what="ages known again")
    broker.stop()
    db = sqlite3.connect(broker.data_dir / "broker.db")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    finally:
        db.close()
