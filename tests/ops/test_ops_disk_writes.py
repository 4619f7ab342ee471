"""SD cards: an idle broker writes nothing, and after a burst the database and its WAL
shrink back (compaction once the broker has been quiet)."""

from __future__ import annotations

import time
from pathlib import Path

from ops_helpers import close, connect, numbered, offline_subscriber, publish, subscribe, wait_until

IDLE_CONFIG = """
[storage]
compact_after_idle = 1
[mqtt]
sys_interval = 1
[log]
verbose = true
"""


def write_bytes(pid: int) -> int:
    """Bytes this process caused to be sent to the storage layer (/proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no write_bytes in /proc/PID/io")


def _files(data_dir: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in data_dir.iterdir() if p.is_file()}


def _database_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("broker.db*"))


def _wait_settled(pid: int, data_dir: Path, quiet: float = 2.5) -> None:
    """Until neither the files nor write_bytes changed for ``quiet`` seconds (compaction
    comes 1 s after the last write)."""
    deadline = time.monotonic() + 30
    state = (_files(data_dir), write_bytes(pid))
    since = time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the broker kept writing"
        time.sleep(0.25)
        now = (_files(data_dir), write_bytes(pid))
        if now != state:
            state, since = now, time.monotonic()


def test_an_idle_broker_writes_nothing(broker_factory) -> None:
    broker = broker_factory(config=IDLE_CONFIG)
    # State of every kind: a persistent session with a queue and a subscription, retained
    # messages, a connected client that pings, $SYS updates every second.
    offline_subscriber(broker.port, "device", "feed/#")
    publish(broker.port, "feed/a", numbered(500, 100))
    retainer = connect(broker.port, "retainer")
    retainer.publish("state/a", b"on", qos=1, retain=True).wait_for_publish(10)
    close(retainer)
    watcher = connect(broker.port, "watcher", keepalive=2)  # pings every 2 s
    subscribe(watcher, "$SYS/#", qos=0)
    broker.wait_for_log("database compacted after", timeout=15)
    _wait_settled(broker.pid, broker.data_dir)  # the burst is over and tidied up

    before_io = write_bytes(broker.pid)
    before_files = _files(broker.data_dir)
    time.sleep(5)  # the measurement window: ten housekeeping ticks, five $SYS updates, pings
    assert watcher.is_connected()
    assert write_bytes(broker.pid) - before_io == 0
    assert _files(broker.data_dir) == before_files
    close(watcher)


def test_database_and_wal_shrink_back_after_a_burst(broker_factory) -> None:
    """50,000 QoS 1 messages (200 bytes) queued for an offline device, then delivered."""
    count = 50_000
    broker = broker_factory(config="[limits]\nmax_queued_messages = 0\n" + IDLE_CONFIG)
    offline_subscriber(broker.port, "device", "feed")
    publish(broker.port, "feed", numbered(count, 200))
    peak = _database_bytes(broker.data_dir)
    assert peak > count * 200  # every message is on disk

    got = [0]
    device = connect(broker.port, "device", clean=False,
                     on_message=lambda m: got.__setitem__(0, got[0] + 1))
    wait_until(lambda: got[0] >= count, timeout=240, what=f"{count} messages delivered")
    broker.wait_for_log("database compacted after", timeout=30)
    close(device)
    wait_until(lambda: (broker.data_dir / "broker.db-wal").stat().st_size == 0, timeout=30,
               what="the WAL emptied")
    after = _database_bytes(broker.data_dir)
    # 10 MB at the peak, a few hundred KB after: how many pages the commits around the compaction
    # leave depends on timing (274 KB once under a CPU hog, against 256 KB allowed then).
    assert after < 512 * 1024, (peak, after)
    # And the broker still works on the compacted file, across a restart.
    broker.restart()
    offline_subscriber(broker.port, "device", "feed")
    publish(broker.port, "feed", numbered(3))
    received: list[bytes] = []
    device = connect(broker.port, "device", clean=False, on_message=lambda m: received.append(m.payload))
    wait_until(lambda: len(received) == 3, what="messages after the restart")
    close(device)
