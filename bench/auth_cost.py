"""What authentication and ACLs cost: ``python -m bench.auth_cost``.

1. Time per password check for each hash format (in this process, one core).
2. A publisher's round-trip latency (p50/p99) while 500 clients log in with a
   password at once, against the same publisher with no logins going on.
3. QoS 0 fan-in (publishers -> one subscriber on a wildcard) with a 100-rule ACL
   against no ACL, same password file, alternating runs, median of each.
4. The same fan-in through the sans-I/O core in this process, timed in CPU seconds of
   this process only: on a shared machine the steadiest figure of what an ACL costs.

The broker runs as ``python -m broker`` from this checkout; the clients are
raw asyncio sockets in this process (MQTT 3.1.1 bytes, no client library).
Figures go to stdout; docs/auth.md holds the last ones and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.canary import read_packet, varint  # noqa: E402  (the byte-level reader and writer of the canary)
from broker.auth import hashing  # noqa: E402


# ---- MQTT 3.1.1 bytes ----------------------------------------------------------------------
def _str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, user: str | None = None, password: str | None = None) -> bytes:
    flags = 0x02 | (0x80 if user else 0) | (0x40 if password else 0)
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + _str(client_id)
    if user:
        body += _str(user)
    if password:
        body += _str(password)
    return b"\x10" + varint(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = _str(topic) + payload
    return b"\x30" + varint(len(body)) + body


def subscribe_packet(topic_filter: str) -> bytes:
    body = struct.pack("!H", 1) + _str(topic_filter) + b"\x00"
    return b"\x82" + varint(len(body)) + body


async def open_client(
    port: int, client_id: str, user: str | None = None, password: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    writer.write(connect_packet(client_id, user, password))
    first, body = await read_packet(reader)
    if first != 0x20 or body[1] != 0:
        raise RuntimeError(f"{client_id}: CONNACK {body!r}")
    return reader, writer


async def subscribe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, topic_filter: str) -> None:
    writer.write(subscribe_packet(topic_filter))
    first, body = await read_packet(reader)
    assert first == 0x90 and body[-1] < 0x80, body


# ---- the broker ----------------------------------------------------------------------------
class Broker:
    def __init__(self, workdir: Path, config: str) -> None:
        (workdir / "broker.toml").write_text(config)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "--port", "0", "--memory", "-c", str(workdir / "broker.toml")],
            cwd=workdir, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise RuntimeError("the broker did not start")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- 1. hash cost ----------------------------------------------------------------------------
def hash_costs(rounds: int) -> None:
    print("1. time per password check (median of", rounds, "in this process)")
    cases = [
        ("argon2id (ours, default)", hashing.create(b"pw")),
        ("pbkdf2-sha512 (ours, -H pbkdf2-sha512)", hashing.create(b"pw", hashing.PBKDF2_SHA512)),
    ]
    import base64
    import hashlib

    salt = os.urandom(12)
    cases.append(("$7$ (mosquitto 2 default, 101 iterations)",
                  f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(hashlib.pbkdf2_hmac('sha512', b'pw', salt, 101)).decode()}"))
    for name, encoded in cases:
        parsed = hashing.parse(encoded)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            assert hashing.verify(parsed, b"pw")
            times.append(time.perf_counter() - start)
        print(f"   {name:45s} {statistics.median(times) * 1000:8.2f} ms")


# ---- 2. latency while many clients log in --------------------------------------------------------
async def latency_probe(port: int, stop: asyncio.Event, samples: list[float]) -> None:
    sub_r, sub_w = await open_client(port, "probe-sub")
    await subscribe(sub_r, sub_w, "probe/t")
    _, pub_w = await open_client(port, "probe-pub")
    while not stop.is_set():
        sent = time.perf_counter()
        pub_w.write(publish_packet("probe/t", b"x"))
        await read_packet(sub_r)
        samples.append(time.perf_counter() - sent)
        await asyncio.sleep(0.005)
    sub_w.close()
    pub_w.close()


async def login_storm(port: int, clients: int, user: str, password: str) -> float:
    start = time.perf_counter()

    async def one(i: int) -> asyncio.StreamWriter:
        _reader, writer = await open_client(port, f"storm-{i}", user, password)
        return writer

    writers = await asyncio.gather(*(one(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
    for writer in writers:
        writer.close()
    return elapsed


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def storm_latency(port: int, clients: int) -> None:
    for phase in ("idle", "storm"):
        stop, samples = asyncio.Event(), list[float]()
        probe = asyncio.ensure_future(latency_probe(port, stop, samples))
        await asyncio.sleep(0.3)
        samples.clear()
        if phase == "storm":
            elapsed = await login_storm(port, clients, "device", "device-pw")
        else:
            await asyncio.sleep(2.0)
        stop.set()
        await probe
        extra = f", {clients} logins done in {elapsed:.1f} s ({clients / elapsed:.0f}/s)" if phase == "storm" else ""
        print(f"   {phase:6s} publisher round trip p50 {percentile(samples, 0.5) * 1000:6.2f} ms,"
              f" p99 {percentile(samples, 0.99) * 1000:6.2f} ms, max {max(samples) * 1000:6.2f} ms"
              f" ({len(samples)} samples{extra})")


# ---- 3. fan-in with and without an ACL ------------------------------------------------------------
def acl_text(rules: int) -> str:
    lines = ["pattern write devices/%c/#", "user collector", "topic read devices/#", "topic deny devices/+/secret"]
    filler = rules - 3
    for i in range(filler):
        if i % 10 == 0:
            lines.append(f"user other{i}")
        lines.append(f"topic {'read' if i % 2 else 'write'} site{i}/+/data/#")
    return "\n".join(lines) + "\n"


async def fan_in(port: int, publishers: int, messages: int) -> float:
    sub_r, sub_w = await open_client(port, "collector", "collector", "collector-pw")
    await subscribe(sub_r, sub_w, "devices/#")
    writers = [(await open_client(port, f"dev{i}", "device", "device-pw"))[1] for i in range(publishers)]
    per = messages // publishers
    total = per * publishers
    start = time.perf_counter()

    async def publish(i: int, writer: asyncio.StreamWriter) -> None:
        packets = [publish_packet(f"devices/dev{i}/sensor{j % 8}", b"21.5") for j in range(100)]
        for _ in range(per // 100):
            writer.write(b"".join(packets))
            await writer.drain()

    senders = asyncio.gather(*(publish(i, w) for i, w in enumerate(writers)))
    received = 0
    buffer = b""
    deadline = time.perf_counter() + 120
    while received < total and time.perf_counter() < deadline:
        try:
            chunk = await asyncio.wait_for(sub_r.read(1 << 20), 5)
        except asyncio.TimeoutError:
            break
        buffer += chunk
        pos = 0
        while True:  # count whole packets (lengths here are < 128)
            if len(buffer) - pos < 2 or len(buffer) - pos < 2 + buffer[pos + 1]:
                break
            pos += 2 + buffer[pos + 1]
            received += 1
        buffer = buffer[pos:]
    elapsed = time.perf_counter() - start
    await senders
    for writer in (*writers, sub_w):
        writer.close()
    if received < total:
        print(f"   (received {received} of {total}: QoS 0 dropped)")
    return received / elapsed


# ---- 4. fan-in through the core, in process --------------------------------------------------------
class _CountingTransport:
    """The core's Transport, counting what is written; clients are named by their certificate."""

    def __init__(self, listener: object, common_name: str) -> None:
        self.listener = listener
        self.peer = f"cert:{common_name}"
        self.cert: dict[str, object] = {"subject": ((("commonName", common_name),),)}
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.written += sum(len(c) for c in chunks)

    def write_buffer_size(self) -> int:
        return 0

    def close(self, linger: bool = False) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def peer_certificate(self) -> dict[str, object]:
        return self.cert


async def core_fan_in(acl_path: str | None, publishers: int, messages: int) -> float:
    """CPU seconds of this process to route ``messages`` QoS 0 PUBLISH through the core."""
    from broker.auth.access import AccessControl
    from broker.auth.file_backend import FileBackend
    from broker.config import Config
    from broker.core.connection import Connection
    from broker.core.engine import Engine
    from broker.core.transport import ListenerInfo
    from broker.storage.memory import MemoryStorage

    storage = MemoryStorage()
    await storage.open()
    engine = Engine(Config(backend="memory", sys_interval=0), storage)
    await engine.start()
    engine.auth = AccessControl(FileBackend(None, acl_path))
    listener = ListenerInfo(name="bench", local=True, tls=True, use_identity_as_username=True)
    sub_transport = _CountingTransport(listener, "collector")
    subscriber = Connection(engine, sub_transport)  # type: ignore[arg-type]
    subscriber.data_received(connect_packet("collector") + subscribe_packet("devices/#"))
    conns = []
    for i in range(publishers):
        conn = Connection(engine, _CountingTransport(listener, "device"))  # type: ignore[arg-type]
        conn.data_received(connect_packet(f"dev{i}"))
        conns.append(conn)
    await asyncio.sleep(0)
    batches = [b"".join(publish_packet(f"devices/dev{i}/sensor{j % 8}", b"21.5") for j in range(100)) for i in range(publishers)]
    before = sub_transport.written
    start = time.process_time()
    for _ in range(messages // (100 * publishers)):
        for conn, batch in zip(conns, batches):
            conn.data_received(batch)
        await asyncio.sleep(0)  # the end-of-iteration writes
    await asyncio.sleep(0)
    elapsed = time.process_time() - start
    delivered = (sub_transport.written - before) // len(publish_packet("devices/dev0/sensor0", b"21.5"))
    assert delivered == messages // (100 * publishers) * 100 * publishers, delivered
    await storage.close()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.auth_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500, help="clients logging in at once (default 500)")
    parser.add_argument("--messages", type=int, default=200_000, help="QoS 0 messages per fan-in run")
    parser.add_argument("--publishers", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3, help="fan-in runs of each configuration")
    parser.add_argument("--quick", action="store_true", help="small figures, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.messages, args.runs = 50, 20_000, 1
    hash_costs(5 if args.quick else 20)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "passwords").write_text(
            f"device:{hashing.create(b'device-pw')}\ncollector:{hashing.create(b'collector-pw')}\n"
        )
        (work / "acl").write_text(acl_text(100))
        base = f'[auth]\npassword_file = "{work / "passwords"}"\n'
        print(f"2. a publisher's latency while {args.clients} clients log in (argon2id, worker processes)")
        broker = Broker(work, base)
        try:
            asyncio.run(storm_latency(broker.port, args.clients))
        finally:
            broker.stop()

        print(f"3. QoS 0 fan-in, {args.publishers} publishers -> 1 subscriber on devices/#, {args.messages} messages")
        results: dict[str, list[float]] = {"no ACL": [], "100-rule ACL": []}
        cpu_used: dict[str, list[float]] = {"no ACL": [], "100-rule ACL": []}
        for _ in range(args.runs):
            for name, config in (("no ACL", base), ("100-rule ACL", base + f'acl_file = "{work / "acl"}"\n')):
                broker = Broker(work, config)
                try:
                    cpu = broker.cpu_seconds()
                    rate = asyncio.run(fan_in(broker.port, args.publishers, args.messages))
                    cpu = broker.cpu_seconds() - cpu
                finally:
                    broker.stop()
                results[name].append(rate)
                cpu_used[name].append(cpu)
                print(f"   {name:13s} {rate:10.0f} msg/s  (broker CPU {cpu:.2f} s)")
        plain, acl = (statistics.median(results[k]) for k in ("no ACL", "100-rule ACL"))
        print(f"   median: no ACL {plain:.0f} msg/s, 100-rule ACL {acl:.0f} msg/s ({(acl / plain - 1) * 100:+.1f}%)")
        # Broker CPU time is steadier than the rate on a shared machine: it is the cost itself.
        plain_cpu, acl_cpu = (statistics.median(cpu_used[k]) / args.messages * 1e6 for k in ("no ACL", "100-rule ACL"))
        print(f"   broker CPU per message (median): no ACL {plain_cpu:.2f} us, 100-rule ACL {acl_cpu:.2f} us"
              f" ({(acl_cpu / plain_cpu - 1) * 100:+.1f}%)")

        print(f"4. the same fan-in through the core in this process (CPU time), {args.messages} messages")
        core: dict[str, list[float]] = {"no ACL": [], "100-rule ACL": []}
        for _ in range(max(3, args.runs)):
            for name, path in (("no ACL", None), ("100-rule ACL", str(work / "acl"))):
                core[name].append(asyncio.run(core_fan_in(path, args.publishers, args.messages)))
        plain_core, acl_core = (statistics.median(core[k]) / args.messages * 1e6 for k in ("no ACL", "100-rule ACL"))
        print(f"   CPU per message (median of {len(core['no ACL'])}): no ACL {plain_core:.2f} us,"
              f" 100-rule ACL {acl_core:.2f} us ({(acl_core / plain_core - 1) * 100:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
