"""What durability costs: QoS 1 throughput per storage mode, RAM with 100k queued messages, restart time.

Run from the repository root (about 2-3 minutes on a 2-core machine):

    python bench/durability.py            # everything
    python bench/durability.py --quick    # smaller sizes, to check that it runs

Not a CI test: numbers depend on the machine and its disk (fsync cost). It starts
``python -m broker`` itself, each run on a fresh temporary data directory and an
OS-chosen port, and talks to it with minimal asyncio clients built on the
broker's codec. Three measurements:

1. QoS 1 throughput for each storage mode: SQLite ``sync = "full"`` (default:
   fsync per group commit), ``"normal"``, ``"off"``, and the ``memory`` backend
   (nothing persisted). Two workloads: publishers -> one online persistent
   subscriber (end to end, every message acknowledged by the subscriber), and
   publishers -> 10 offline persistent sessions (every message queued 10 times).
   Rate = messages / time until every PUBACK (and every delivery) arrived;
   median of 3 runs. The load comes from one Python process sharing the 2
   CPUs, so the fastest modes may be limited by the client, not the broker:
   the differences between modes are the point, not the absolute numbers.
2. The broker's RSS: empty, with 100 offline persistent sessions, and with
   100 sessions x 1000 messages queued (100k queue entries, distinct messages
   of 100 bytes), for SQLite and for the memory backend as a contrast.
3. Restart time with that queue: from process start to the ``listening on``
   line, and to the first message delivered to a reconnecting session (and its
   whole queue of 1000), after kill -9 (crash recovery) and after SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker.protocol.codec import PacketReader, encode, encode_publish  # noqa: E402
from broker.protocol.packets import (  # noqa: E402
    Connack,
    Connect,
    Disconnect,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionOptions,
)

V311 = 4
LISTENING = re.compile(r"listening on (\S+):(\d+)")
PUBLISHERS = 4
WINDOW = 20  # in-flight QoS 1 per publisher (the broker's default Receive Maximum)


# ------------------------------------------------------------------------------ broker process


class Broker:
    """``python -m broker`` with a config file, on port 0, output drained by a thread."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.config_path = workdir / "broker.toml"
        self.config_path.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.lines: list[tuple[float, str]] = []
        self.started_at = 0.0
        self.listening_at = 0.0

    def start(self, timeout: float = 60.0) -> bool:
        """Start; False if the broker refused the configuration (exit code 2)."""
        self.lines = []
        listening = threading.Event()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "-c", str(self.config_path),
             "--port", "0", "--data-dir", str(self.data_dir)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        )

        def drain(pipe) -> None:
            for raw in iter(pipe.readline, b""):
                line = raw.decode(errors="replace")
                self.lines.append((time.monotonic(), line))
                match = LISTENING.search(line)
                if match and not listening.is_set():
                    self.port = int(match.group(2))
                    self.listening_at = time.monotonic()
                    listening.set()
            listening.set()

        threading.Thread(target=drain, args=(self.proc.stdout,), daemon=True).start()
        listening.wait(timeout)
        if self.proc.poll() == 2:
            return False
        if not self.listening_at or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError("broker did not start:\n" + "".join(line for _, line in self.lines))
        return True

    @property
    def startup_seconds(self) -> float:
        return self.listening_at - self.started_at

    def rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MiB, from /proc."""
        assert self.proc is not None
        fields = {}
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def disk_mb(self) -> float:
        return sum(f.stat().st_size for f in self.data_dir.glob("broker.db*")) / 2**20

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError("broker did not stop within 60 s of SIGTERM") from None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------------ clients


class Client:
    """One MQTT 3.1.1 connection: CONNECT, then a reader dispatching to callbacks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = PacketReader(client_side=True, version=V311)
        self.early: list = []  # packets that arrived in the same read as CONNACK

    @classmethod
    async def connect(cls, port: int, client_id: str, clean: bool) -> tuple[Client, Connack]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        writer.write(encode(Connect(client_id, V311, clean_start=clean, keepalive=0), V311))
        while True:
            packets = client.decoder.feed(await reader.read(65536))
            if packets:
                connack = packets[0]
                assert isinstance(connack, Connack) and connack.reason_code == 0, connack
                client.early = packets[1:]
                return client, connack

    async def packets(self):
        """Yield lists of packets as they arrive, until EOF."""
        if self.early:
            early, self.early = self.early, []
            yield early
        while True:
            data = await self.reader.read(262144)
            if not data:
                return
            packets = self.decoder.feed(data)
            if packets:
                yield packets

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.writer.write(encode(Subscribe(1, [(topic_filter, SubscriptionOptions(qos=qos))]), V311))
        async for packets in self.packets():
            assert isinstance(packets[0], Suback), packets
            return

    async def close(self) -> None:
        self.writer.write(encode(Disconnect(), V311))
        try:
            await self.writer.drain()
        except OSError:
            pass
        self.writer.close()


async def make_offline_sessions(port: int, prefix: str, count: int, topic_filter) -> None:
    """Persistent sessions (clean session 0) with one QoS 1 subscription each, then offline."""
    async def one(i: int) -> None:
        client, _ = await Client.connect(port, f"{prefix}{i}", clean=False)
        await client.subscribe(topic_filter(i), 1)
        await client.close()

    for start in range(0, count, 20):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 20))))


async def publish_qos1(port: int, topics: list[str], per_topic: int, payload_size: int) -> float:
    """Publish ``per_topic`` QoS 1 messages to each topic over PUBLISHERS pipelined connections;
    returns the seconds until the last PUBACK."""
    jobs = [(t, n) for n in range(per_topic) for t in topics]
    shares = [jobs[i::PUBLISHERS] for i in range(PUBLISHERS)]
    clients = [(await Client.connect(port, f"bench-pub-{i}", clean=True))[0] for i in range(PUBLISHERS)]

    async def run(client: Client, share: list[tuple[str, int]]) -> None:
        window = asyncio.Semaphore(WINDOW)
        done = asyncio.Event()
        acked = 0

        async def read_acks() -> None:
            nonlocal acked
            async for packets in client.packets():
                for packet in packets:
                    if isinstance(packet, Puback):
                        acked += 1
                        window.release()
                if acked == len(share):
                    done.set()
                    return

        reader = asyncio.ensure_future(read_acks())
        for index, (topic, n) in enumerate(share):
            await window.acquire()
            payload = f"{topic}:{n}|".encode().ljust(payload_size, b".")
            client.writer.write(encode_publish(topic, payload, 1, False, False, index % 65535 + 1, None, V311))
        if share:
            await done.wait()
        reader.cancel()
        await client.close()

    started = time.monotonic()
    await asyncio.gather(*(run(c, s) for c, s in zip(clients, shares)))
    return time.monotonic() - started


class Receiver:
    """An online subscriber that acknowledges every QoS 1 message and counts them."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.count = 0
        self.first_at: float | None = None
        self.target = 0
        self.reached = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    def expect(self, total: int) -> None:
        self.target = total
        if self.count >= total:
            self.reached.set()

    async def _run(self) -> None:
        async for packets in self.client.packets():
            acks = []
            for packet in packets:
                if isinstance(packet, Publish):
                    if self.first_at is None:
                        self.first_at = time.monotonic()
                    self.count += 1
                    if packet.qos and packet.packet_id is not None:
                        acks.append(encode(Puback(packet.packet_id), V311))
            if acks:
                self.client.writer.write(b"".join(acks))
            if self.target and self.count >= self.target:
                self.reached.set()


# ------------------------------------------------------------------------------ measurements


@dataclass
class Mode:
    name: str
    storage: str  # TOML lines of [storage]
    loses: str


MODES = [
    Mode("sqlite sync=full (default)", 'backend = "sqlite"\nsync = "full"',
         "nothing acknowledged (kill -9 or power cut)"),
    Mode("sqlite sync=normal", 'backend = "sqlite"\nsync = "normal"',
         "nothing on kill -9; last commits on power cut"),
    Mode("sqlite sync=off", 'backend = "sqlite"\nsync = "off"',
         "nothing on kill -9; power cut: recent commits, and the file may be corrupted"),
    Mode("memory", 'backend = "memory"', "everything, on any stop"),
]


def config_for(storage: str, max_queued: int) -> str:
    return f"[storage]\n{storage}\n\n[limits]\nmax_queued_messages = {max_queued}\n"


async def throughput_online(port: int, messages: int) -> float:
    client, _ = await Client.connect(port, "bench-sub", clean=False)
    await client.subscribe("bench/t/#", 1)
    receiver = Receiver(client)
    receiver.expect(messages)
    started = time.monotonic()
    await publish_qos1(port, [f"bench/t/{i}" for i in range(8)], messages // 8, 64)
    await asyncio.wait_for(receiver.reached.wait(), 120)
    elapsed = time.monotonic() - started
    receiver.task.cancel()
    await client.close()
    return messages / elapsed


async def throughput_offline(port: int, messages: int, sessions: int = 10) -> float:
    await make_offline_sessions(port, "bench-off-", sessions, lambda i: "bench/o/#")
    elapsed = await publish_qos1(port, [f"bench/o/{i}" for i in range(8)], messages // 8, 64)
    return messages / elapsed


def measure_throughput(root: Path, messages: int, repeat: int) -> list[tuple[str, str, str, str]]:
    """The median of ``repeat`` runs, each on a fresh broker and data directory."""
    rows = []
    for mode in MODES:
        results: list[float | None] = []
        for workload in (throughput_online, throughput_offline):
            rates = []
            for _ in range(repeat):
                workdir = Path(tempfile.mkdtemp(dir=root))
                broker = Broker(workdir, config_for(mode.storage, messages + 1000))
                if not broker.start():
                    break
                try:
                    rates.append(asyncio.run(workload(broker.port, messages)))
                finally:
                    broker.stop()
            results.append(statistics.median(rates) if rates else None)
        cells = [f"{r:,.0f}" if r is not None else "n/a (mode not supported)" for r in results]
        rows.append((mode.name, cells[0], cells[1], mode.loses))
        print(f"  {mode.name}: {cells[0]} msg/s to an online subscriber, {cells[1]} msg/s to 10 offline",
              flush=True)
    return rows


async def first_and_all(port: int, client_id: str, expected: int) -> tuple[float, float]:
    """Seconds from connect to the first delivered message, and to the whole queue."""
    started = time.monotonic()
    client, connack = await Client.connect(port, client_id, clean=False)
    assert connack.session_present, f"{client_id}: session lost"
    receiver = Receiver(client)
    receiver.expect(expected)
    try:
        await asyncio.wait_for(receiver.reached.wait(), 120)
    except asyncio.TimeoutError:
        raise RuntimeError(f"{client_id}: {receiver.count} of {expected} queued messages arrived") from None
    done = time.monotonic()
    receiver.task.cancel()
    await client.close()
    assert receiver.first_at is not None
    return receiver.first_at - started, done - started


def measure_queue(root: Path, storage: str, sessions: int, per_session: int, restarts: bool) -> dict:
    """RSS empty / with sessions / with the queue; then restart timings (SQLite only)."""
    out: dict = {}
    workdir = Path(tempfile.mkdtemp(dir=root))
    broker = Broker(workdir, config_for(storage, per_session * 2))
    broker.start()
    try:
        time.sleep(0.5)
        out["rss_empty"] = broker.rss_mb()[0]
        asyncio.run(make_offline_sessions(broker.port, "dev-", sessions, lambda i: f"dev/{i}/cmd"))
        time.sleep(0.3)
        out["rss_sessions"] = broker.rss_mb()[0]
        seconds = asyncio.run(publish_qos1(
            broker.port, [f"dev/{i}/cmd" for i in range(sessions)], per_session, 100))
        out["queue_rate"] = sessions * per_session / seconds
        time.sleep(1.0)
        out["rss_queued"], out["rss_peak"] = broker.rss_mb()
        if not restarts:
            return out
        out["disk"] = broker.disk_mb()
        for how, label in ((broker.kill, "kill -9"), (broker.stop, "SIGTERM")):
            how()
            broker.start()
            listening = broker.startup_seconds
            index = 0 if label == "kill -9" else 1
            first, whole = asyncio.run(first_and_all(broker.port, f"dev-{index}", per_session))
            rss_after = broker.rss_mb()[0]
            out[label] = (listening, first + listening, whole + listening, rss_after)
        return out
    finally:
        broker.stop()


def fsync_probe(directory: Path, rounds: int = 100) -> float:
    """Milliseconds per 4 KiB write + fsync where the databases live: what sync=full pays per commit."""
    path = directory / ".fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(rounds):
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        return (time.perf_counter() - started) / rounds * 1000
    finally:
        os.close(fd)
        path.unlink()


def table(headers: list[str], rows: list) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that the bench runs")
    parser.add_argument("--messages", type=int, default=None, help="messages per throughput run (default 50000)")
    parser.add_argument("--repeat", type=int, default=None, help="throughput runs per cell, median shown (default 3)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where the brokers' data directories go (default: the system temp dir); "
                        "put it on the disk you care about, fsync cost is what sync=full pays")
    args = parser.parse_args()
    messages = args.messages or (2000 if args.quick else 50000)
    repeat = args.repeat or (1 if args.quick else 3)
    sessions, per_session = (10, 100) if args.quick else (100, 1000)
    root = Path(tempfile.mkdtemp(prefix="edgemq-bench-", dir=args.data_root))
    started = time.monotonic()
    fsync_ms = fsync_probe(root)
    print(f"data under {root}: {fsync_ms:.2f} ms per 4 KiB write+fsync; {os.cpu_count()} CPUs", flush=True)
    try:
        print(f"QoS 1 throughput, {messages} messages of 64 bytes, {PUBLISHERS} publishers x {WINDOW} in flight, "
              f"median of {repeat}:",
              flush=True)
        rows = measure_throughput(root, messages, repeat)
        print(f"RAM with {sessions} offline sessions x {per_session} queued messages of 100 bytes:", flush=True)
        sqlite = measure_queue(root, 'backend = "sqlite"', sessions, per_session, restarts=True)
        print("  sqlite done", flush=True)
        memory = measure_queue(root, 'backend = "memory"', sessions, per_session, restarts=False)
        print("  memory done", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    total = sessions * per_session
    print()
    print(f"## QoS 1 throughput (msg/s, median of {repeat} runs of {messages:,} messages; "
          f"{fsync_ms:.2f} ms per fsync on this disk)")
    print(table(["storage mode", "to 1 online subscriber", "to 10 offline sessions", "what a crash can lose"], rows))
    print()
    print(f"## Broker RSS (MiB) with {total:,} messages queued for {sessions} offline sessions")
    print(table(
        ["backend", "empty", f"{sessions} sessions", f"{total:,} queued", "peak", "queueing rate (msg/s)"],
        [(name, f"{r['rss_empty']:.1f}", f"{r['rss_sessions']:.1f}", f"{r['rss_queued']:.1f}",
          f"{r['rss_peak']:.1f}", f"{r['queue_rate']:,.0f}") for name, r in (("sqlite", sqlite), ("memory", memory))],
    ))
    print(f"(SQLite files on disk: {sqlite['disk']:.1f} MiB)")
    print()
    print(f"## Restart with {total:,} queued messages (seconds from process start)")
    print(table(
        ["restart after", "listening", f"first message to a session", f"its {per_session} messages", "RSS after (MiB)"],
        [(label, f"{v[0]:.2f}", f"{v[1]:.2f}", f"{v[2]:.2f}", f"{v[3]:.1f}")
         for label, v in ((k, sqlite[k]) for k in ("kill -9", "SIGTERM"))],
    ))
    print(f"\n(total bench time {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
