"""What the broker writes to disk (SD card wear): bytes per QoS 1 message in each ``sync``
mode, and bytes per hour when idle.

Run from the repository root (about a minute):

    python bench/disk_writes.py               # 2000 messages per workload
    python bench/disk_writes.py --messages 500 --idle 10

Figures come from ``/proc/PID/io`` ``write_bytes`` of the broker process: what it sent to
the storage layer (page-cache level, so a 100-byte change costs at least one 4 KiB page),
not counting the file system's own journal. Workloads, each on a fresh data directory:

* ``one by one``: a sensor that publishes a QoS 1 message and waits for PUBACK before the
  next one (every message is its own commit: the worst case for an SD card);
* ``burst``: 100 messages in flight at a time (group commit shares the writes);
* to a persistent session that is ``online`` (each message stored, sent, acknowledged,
  deleted) or ``offline`` (each message stays queued);
* idle: after the traffic and the compaction that follows it, a connected client that
  pings every second and ``$SYS`` updates every 10 s; extrapolated to an hour.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"x" * 100


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/PID/io")


class Broker:
    def __init__(self, sync: str, directory: str) -> None:
        config = Path(directory) / "broker.toml"
        config.write_text(f'[storage]\nsync = "{sync}"\ncompact_after_idle = 2\n[limits]\nmax_queued_messages = 0\n')
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "--port", "0", "--data-dir", str(Path(directory) / "data"),
             "-c", str(config), "-v"],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        for line in self.proc.stderr:
            self.lines.append(line)
            match = re.search(r"listening on \S+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline:
                raise TimeoutError(text)
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def client(port: int, client_id: str, clean: bool = True, keepalive: int = 60) -> mqtt.Client:
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    c.max_inflight_messages_set(100)
    c.on_connect = lambda *a: done.set()
    c.connect("127.0.0.1", port, keepalive=keepalive)
    c.loop_start()
    assert done.wait(10)
    return c


def subscribe(c: mqtt.Client, topic: str) -> None:
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(topic, 1)
    assert done.wait(10)


def run(sync: str, workload: str, count: int, idle: float) -> tuple[float, float | None]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("DISK_WRITES_DIR")) as directory:
        broker = Broker(sync, directory)
        try:
            device = client(broker.port, "device", clean=False)
            subscribe(device, "sensors/#")
            received = [0]
            device.on_message = lambda c, u, m: received.__setitem__(0, received[0] + 1)
            if workload.startswith("offline"):
                device.disconnect()
                device.loop_stop()
            publisher = client(broker.port, "sensor")
            time.sleep(0.5)
            start = write_bytes(broker.proc.pid)
            if workload.endswith("one by one"):
                for _ in range(count):
                    publisher.publish("sensors/t", PAYLOAD, qos=1).wait_for_publish(30)
            else:
                infos = [publisher.publish("sensors/t", PAYLOAD, qos=1) for _ in range(count)]
                for info in infos:
                    info.wait_for_publish(60)
            if workload.startswith("online"):
                deadline = time.monotonic() + 60
                while received[0] < count and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.3)  # the last PUBACKs from the device are committed
            per_message = (write_bytes(broker.proc.pid) - start) / count
            per_hour = None
            if idle:
                watcher = client(broker.port, "watcher", keepalive=1)
                broker.wait_for("database compacted", timeout=60)
                time.sleep(3)
                idle_start = write_bytes(broker.proc.pid)
                time.sleep(idle)
                per_hour = (write_bytes(broker.proc.pid) - idle_start) * 3600 / idle
                watcher.disconnect()
            publisher.disconnect()
            return per_message, per_hour
        finally:
            broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement (0: skip)")
    args = parser.parse_args()
    print(f"{args.messages} QoS 1 messages of {len(PAYLOAD)} bytes per workload; bytes written per message")
    workloads = ("online, one by one", "online, burst", "offline, one by one", "offline, burst")
    print("| sync | " + " | ".join(workloads) + " | idle, bytes per hour |")
    print("| --- " * (len(workloads) + 2) + "|")
    for sync in ("full", "normal", "off"):
        row = []
        idle_rate = None
        for workload in workloads:
            per_message, per_hour = run(sync, workload, args.messages,
                                        args.idle if workload == "online, burst" else 0)
            row.append(f"{per_message:,.0f}")
            if per_hour is not None:
                idle_rate = per_hour
        idle_text = "-" if idle_rate is None else f"{idle_rate:,.0f}"
        print(f"| {sync} | " + " | ".join(row) + f" | {idle_text} |", flush=True)


if __name__ == "__main__":
    main()
