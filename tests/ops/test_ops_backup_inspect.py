"""``python -m broker backup`` during traffic, restored and served; ``inspect`` while the
broker runs and while it is stopped."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from ops_helpers import (
    close, connect, numbered, offline_subscriber, payload_number, publish, run_broker_command, wait_until,
)

UNLIMITED = "[limits]\nmax_queued_messages = 0\n"


def _inspect(data_dir: Path) -> dict:
    result = run_broker_command("inspect", "--json", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_backup_during_traffic_restores_to_a_broker_with_the_data(broker_factory, tmp_path: Path) -> None:
    broker = broker_factory(config=UNLIMITED)
    offline_subscriber(broker.port, "device", "feed")
    publish(broker.port, "feed", numbered(200, 64))  # queued before the backup for sure
    stop = threading.Event()
    sent = [200]

    def traffic() -> None:
        client = connect(broker.port, "busy-publisher")
        while not stop.is_set():
            client.publish("feed", numbered(sent[0] + 1, 64)[-1], qos=1).wait_for_publish(10)
            sent[0] += 1
        close(client)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        wait_until(lambda: sent[0] >= 300, what="traffic under way")
        backup = tmp_path / "copy.db"
        result = run_broker_command("backup", str(backup), "--data-dir", str(broker.data_dir))
        assert result.returncode == 0, result.stderr
        assert "running broker" in result.stdout
        count_at_backup_end = sent[0]
    finally:
        stop.set()
        thread.join(30)
    broker.stop()
    assert not list(broker.data_dir.glob("backup-*")), "the broker's temporary copy was left behind"

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(backup, restored / "broker.db")
    snapshot = _inspect(restored)
    assert snapshot["source"].startswith("database file")
    [device] = snapshot["sessions"]
    in_backup = device["queued_messages"]
    # One message at a time is in flight: it may be committed (in the copy) before its PUBACK counts.
    assert 300 <= in_backup <= count_at_backup_end + 1

    # A broker started on the restored copy delivers exactly the messages it held, in order.
    again = broker_factory(data_dir=restored, config=UNLIMITED)
    got: list[int] = []
    client = connect(again.port, "device", clean=False, on_message=lambda m: got.append(payload_number(m.payload)))
    wait_until(lambda: len(got) >= in_backup, what=f"{in_backup} restored messages")
    close(client)
    assert got[:in_backup] == list(range(in_backup))
    assert len(got) == in_backup


def test_backup_of_a_stopped_broker(broker_factory, tmp_path: Path) -> None:
    broker = broker_factory()
    offline_subscriber(broker.port, "device", "feed")
    publish(broker.port, "feed", numbered(7))
    broker.stop()
    result = run_broker_command("backup", str(tmp_path / "b.db"), "--data-dir", str(broker.data_dir))
    assert result.returncode == 0, result.stderr
    assert "broker stopped" in result.stdout
    restored = tmp_path / "r"
    restored.mkdir()
    shutil.copy(tmp_path / "b.db", restored / "broker.db")
    assert _inspect(restored)["sessions"][0]["queued_messages"] == 7


def test_backup_without_a_database_fails_clearly(tmp_path: Path) -> None:
    result = run_broker_command("backup", str(tmp_path / "b.db"), "--data-dir", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "no database at" in result.stderr
    assert not (tmp_path / "b.db").exists()


def test_inspect_running_and_stopped(broker_factory) -> None:
    broker = broker_factory(config=UNLIMITED)
    offline_subscriber(broker.port, "sensor-a", "a/#")
    offline_subscriber(broker.port, "sensor-b", "b/#")
    publish(broker.port, "a/1", numbered(12, 100))
    publish(broker.port, "b/1", numbered(3, 10))
    retainer = connect(broker.port, "retainer")
    retainer.publish("r/1", b"v", qos=1, retain=True).wait_for_publish(10)
    retainer.publish("r/2", b"v", qos=1, retain=True).wait_for_publish(10)
    online = connect(broker.port, "online", clean=False)
    online.subscribe("a/#", 1)

    running = _inspect(broker.data_dir)
    assert running["source"] == "running broker"
    sessions = {s["client_id"]: s for s in running["sessions"]}
    assert sessions["sensor-a"]["queued_messages"] == 12
    assert sessions["sensor-a"]["queued_bytes"] == 1200
    assert sessions["sensor-a"]["connected"] is False
    assert sessions["sensor-b"]["queued_messages"] == 3
    assert sessions["sensor-b"]["queued_bytes"] == 30
    assert sessions["online"]["connected"] is True
    assert running["retained_messages"] == 2
    assert running["queued_messages"] == 15
    assert running["database_bytes"] > 0
    # The table form names the same figures.
    table = run_broker_command("inspect", "--data-dir", str(broker.data_dir))
    assert table.returncode == 0
    assert "retained messages: 2" in table.stdout
    assert any(line.split()[:3] == ["sensor-a", "disconnected", "12"] for line in table.stdout.splitlines())

    close(online)
    broker.stop()
    stopped = _inspect(broker.data_dir)
    assert stopped["source"].startswith("database file")
    stopped_sessions = {s["client_id"]: s for s in stopped["sessions"]}
    for client_id in ("sensor-a", "sensor-b"):
        for key in ("queued_messages", "queued_bytes", "subscriptions"):
            assert stopped_sessions[client_id][key] == sessions[client_id][key], (client_id, key)
    assert stopped["retained_messages"] == 2


def test_inspect_needs_a_database(tmp_path: Path) -> None:
    result = run_broker_command("inspect", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "no database at" in result.stderr
