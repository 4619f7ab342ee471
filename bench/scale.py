"""The scale scenarios of issue 13 (goal 5): many connections, filters, sessions, retained messages.

Each one starts a fresh broker (ours or mosquitto; amqtt is left out, see SCALE_BROKERS), drives
it in phases and returns a dict of figures (``value`` is the headline; ``ROWS`` says which
figures the report shows). The bulk load that needs speed goes through the C load generator
(``loadgen idle`` for the idle connections, ``loadgen run`` for the throughput with 100,000
filters); the phases whose speed is the broker's, not the client's (subscribing, queueing,
restarting, the reconnect storm, the retained flood) are driven from Python here, and the
driver's own CPU time is reported beside the broker's so a reader can see it was not the limit.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from bench import loadgen
from bench.brokers import Broker, BrokerError, rss_kib
from bench.scenarios import Params, Scenario, figures

SCALE_BROKERS = ("ours", "mosquitto")
AMQTT_REMARK = (
    "amqtt, scale scenarios: not measured (—): it accepts under 1000 connections per second and "
    "holds about 50 KiB per connection, so 50,000 connections would take minutes and about 2.5 GB"
)
# The report's broker-settings lines for these scenarios (each starts a fresh broker of its own).
SETTINGS: dict[str, list[str]] = {
    "ours": [
        "scale scenarios: a fresh broker per run with the settings above; `scale-idle`: `-c FILE` with two "
        "`[[listener]]` tables (`port = 0`) instead of `--port 0`; the default `max_connections` (100000) "
        "suffices; `scale-sessions`: restarted with `--port PORT` (the port of its first start) on the same "
        "`--data-dir`",
    ],
    "mosquitto": [
        "scale scenarios: a fresh mosquitto per run with the settings above; `scale-idle`: a second "
        "`listener PORT2 127.0.0.1`; `scale-sessions` only: `persistence true` and `persistence_location DIR/` "
        "instead of `persistence false` (otherwise it has nothing to restore), restarted with the same config",
    ],
}
SUBSCRIBER_CONNECTIONS = 10  # the 100,000 filters are spread over this many connections
FILTERS_PER_SUBSCRIBE = 100  # filters per SUBSCRIBE packet
SUBSCRIBE_WINDOW = 16  # SUBSCRIBE packets awaiting their SUBACK, per connection
BASELINE_FILTERS = 100
PUBLISH_WINDOW = 500  # QoS 1 PUBLISHes awaiting their PUBACK (queued messages, retained messages)
CONNECT_CONCURRENCY = 500  # connections being set up at once by the Python driver
IDLE_TIMEOUT = 10.0  # seconds without a new delivery before the missing messages count as lost
PAYLOAD = 64


# --- MQTT 3.1.1 packets, just what the driver needs


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _length(len(body)) + body


def connect_packet(client_id: str, clean: bool) -> bytes:
    # Keep-alive 0: the driver's connections may sit silent for a long time (the broker's restart).
    return _packet(0x10, _str(b"MQTT") + bytes([4, 0x02 if clean else 0x00, 0, 0]) + _str(client_id.encode()))


def subscribe_packet(packet_id: int, filters: Iterable[str], qos: int) -> bytes:
    return _packet(0x82, packet_id.to_bytes(2, "big") + b"".join(_str(f.encode()) + bytes([qos]) for f in filters))


def publish_packet(topic: str, payload: bytes, qos: int, packet_id: int = 0, retain: bool = False) -> bytes:
    pid = packet_id.to_bytes(2, "big") if qos else b""
    return _packet(0x30 | qos << 1 | int(retain), _str(topic.encode()) + pid + payload)


DISCONNECT = b"\xe0\x00"


def take_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete packets at the front of ``buf`` as (first byte, body); removes them from ``buf``."""
    out: list[tuple[int, bytes]] = []
    pos, end = 0, len(buf)
    while pos + 2 <= end:
        length, shift, i = 0, 0, pos + 1
        while i < end:
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if byte < 0x80:
                break
            shift += 7
        else:
            break
        if i + length > end:
            break
        out.append((buf[pos], bytes(buf[i:i + length])))
        pos = i + length
    del buf[:pos]
    return out


def parse_publish(first: int, body: bytes) -> tuple[str, int, bytes]:
    """(topic, packet id or 0, payload) of a PUBLISH body."""
    tl = int.from_bytes(body[:2], "big")
    topic = body[2:2 + tl].decode()
    at = 2 + tl
    pid = 0
    if first & 0x06:
        pid = int.from_bytes(body[at:at + 2], "big")
        at += 2
    return topic, pid, body[at:]


def _payload(text: str) -> bytes:
    return text.encode().ljust(PAYLOAD, b".")


# --- a blocking client (a few connections: subscribing, publishing, the retained flood)


class Client:
    def __init__(self, port: int, client_id: str, clean: bool = True, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pending: list[tuple[int, bytes]] = []
        self.sock.sendall(connect_packet(client_id, clean))
        first, body = self.read_one()
        if first >> 4 != 2 or body[1] != 0:
            raise BrokerError(f"CONNACK refused for {client_id}: {body.hex()}")
        self.session_present = bool(body[0] & 1)

    def read(self) -> list[tuple[int, bytes]]:
        if self.pending:
            out, self.pending = self.pending, []
            return out
        data = self.sock.recv(1 << 18)
        if not data:
            raise ConnectionError("closed by the broker")
        self.buf += data
        return take_packets(self.buf)

    def read_one(self) -> tuple[int, bytes]:
        while not self.pending:
            self.pending = self.read()
        return self.pending.pop(0)

    def close(self) -> None:
        try:
            self.sock.sendall(DISCONNECT)
        except OSError:
            pass
        self.sock.close()


def publish_all(client: Client, messages: Iterable[tuple[str, bytes]], qos: int, retain: bool = False) -> int:
    """Publish at QoS 1 with PUBLISH_WINDOW unacknowledged at most; returns the PUBACKs received."""
    assert qos == 1
    outstanding = acked = 0
    packet_id = 0
    batch: list[bytes] = []

    def collect() -> None:
        nonlocal outstanding, acked
        for first, _ in client.read():
            if first >> 4 == 4:
                outstanding -= 1
                acked += 1

    for topic, payload in messages:
        packet_id = packet_id % 65535 + 1
        batch.append(publish_packet(topic, payload, 1, packet_id, retain))
        outstanding += 1
        if len(batch) >= PUBLISH_WINDOW // 4:
            client.sock.sendall(b"".join(batch))
            batch.clear()
            while outstanding > PUBLISH_WINDOW // 2:
                collect()
    if batch:
        client.sock.sendall(b"".join(batch))
    while outstanding > 0:
        collect()
    return acked


# --- measurement helpers


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PeakRSS:
    """Samples a process's VmRSS every 20 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (OSError, RuntimeError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Context:
    """What a scale scenario gets from the runner."""

    params: Params
    tag: str
    nofile: int
    make: Callable[[], Broker]  # a fresh, not yet started broker for this run
    say: Callable[[str], None]


# --- 1. idle connections over two listeners


def run_idle(ctx: Context) -> dict[str, Any]:
    n = ctx.params.idle_connections
    if ctx.nofile < n + 256:
        # The broker needs a descriptor per connection; past the limit connections fail, which would
        # measure the limit, not the broker.
        raise BrokerError(
            f"open-file limit {ctx.nofile} is below {n:,} connections + 256: raise the hard limit "
            f"(`ulimit -Hn`, needs root with CAP_SYS_RESOURCE) or use --idle-connections {max(ctx.nofile - 256, 0)}")
    broker = ctx.make()
    broker.plain_listeners = 2  # one destination port gives at most the ephemeral port range
    conns: list[loadgen.IdleConnections] = []
    try:
        broker.start()
        warm = loadgen.IdleConnections(broker.port, 50, ctx.tag + "w", ctx.nofile)
        warm.open(timeout=60)
        warm.close()
        time.sleep(0.5)
        before = broker.rss_kib()
        halves = [n // 2, n - n // 2]
        for i, (port, count) in enumerate(zip(broker.plain_ports, halves)):
            conns.append(loadgen.IdleConnections(port, count, f"{ctx.tag}{'ab'[i]}", ctx.nofile))
            conns[-1].spawn(timeout=600)
        opened = [c.wait_open() for c in conns]
        established = sum(o[0] for o in opened)
        failed = sum(o[1] for o in opened)
        seconds = max(o[2] for o in opened)
        time.sleep(1.0)
        if not broker.running:
            raise BrokerError(f"{broker.label} exited while holding idle connections\n{broker.log_tail(10)}")
        after = broker.rss_kib()
        finals = [c.close(timeout=300) for c in conns]
        conns.clear()
        dropped = sum(f["dropped"] for f in finals)
        errors = [f.get("first_error", "") for f in finals if f.get("first_error")]
        if established == 0:
            raise loadgen.LoadgenError(f"no connection established ({'; '.join(errors)})")
        per_conn = (after - before) / established
        out: dict[str, Any] = {
            "value": per_conn, "rss_before_kib": before, "rss_after_kib": after, "established": established,
            "failed": failed, "dropped": dropped, "connect_s": seconds,
            "connect_rate": established / seconds if seconds > 0 else None, "first_error": "; ".join(errors),
        }
        if failed or dropped:
            out["error"] = f"{failed} connections failed, {dropped} dropped by the broker ({'; '.join(errors)})"
        return out
    finally:
        for c in conns:
            c.kill()
        broker.stop()


# --- 2. 100,000 subscriptions


def make_filters(start: int, count: int) -> list[str]:
    """Distinct filters in four shapes, none matching the load's `bench/TAG/pN` topics."""
    shapes = ("dev/{i}/+/temp", "site/{i}/#", "+/{i}/status", "fleet/{i}/sensor/{j}")
    return [shapes[i % 4].format(i=i, j=i % 10) for i in range(start, start + count)]


def subscribe_all(port: int, tag: str, filters: list[str], connections: int) -> tuple[list[Client], float, int]:
    """Subscribe ``filters`` over ``connections`` clients; returns (clients, seconds, refused filters)."""
    clients = [Client(port, f"subs-{tag}-{c}") for c in range(connections)]
    chunks = [filters[i:i + FILTERS_PER_SUBSCRIBE] for i in range(0, len(filters), FILTERS_PER_SUBSCRIBE)]
    todo = [chunks[c::connections] for c in range(connections)]
    outstanding = [0] * connections
    refused = 0
    started = time.monotonic()
    packet_id = 0
    while any(todo) or any(outstanding):
        for c, client in enumerate(clients):
            batch = []
            while todo[c] and outstanding[c] < SUBSCRIBE_WINDOW:
                packet_id = packet_id % 65535 + 1
                batch.append(subscribe_packet(packet_id, todo[c].pop(), 0))
                outstanding[c] += 1
            if batch:
                client.sock.sendall(b"".join(batch))
        for c, client in enumerate(clients):
            if outstanding[c] > SUBSCRIBE_WINDOW // 2 or (outstanding[c] and not todo[c]):
                for first, body in client.read():
                    if first >> 4 == 9:
                        outstanding[c] -= 1
                        refused += sum(1 for code in body[2:] if code >= 0x80)
    return clients, time.monotonic() - started, refused


def _fan_in(ctx: Context, broker: Broker, suffix: str) -> dict[str, Any]:
    """The QoS 0 fan-in load of the `qos0` scenario (4 publishers, one subscriber on `bench/TAG/#`)."""
    p = ctx.params
    scenario = Scenario("qos0", "QoS 0 fan-in", "throughput", qos=0, publishers=p.publishers)
    raw = loadgen.run(broker.port, scenario.loadgen_options(p, ctx.tag + suffix, broker.pid),
                      timeout=p.warmup + p.duration + p.drain_timeout + 2 * p.drain_idle + 90, nofile=ctx.nofile)
    return figures(scenario, raw)


def run_subscriptions(ctx: Context) -> dict[str, Any]:
    n = ctx.params.subscriptions
    broker = ctx.make()
    clients: list[Client] = []
    try:
        broker.start()
        base_clients, _, refused_base = subscribe_all(
            broker.port, ctx.tag + "b", make_filters(n, BASELINE_FILTERS), SUBSCRIBER_CONNECTIONS)
        clients += base_clients
        base = _fan_in(ctx, broker, "b")
        time.sleep(0.5)
        rss_before = broker.rss_kib()
        cpu_before = cpu_seconds(broker.pid)
        many_clients, seconds, refused = subscribe_all(
            broker.port, ctx.tag + "m", make_filters(0, n), SUBSCRIBER_CONNECTIONS)
        clients += many_clients
        subscribe_cpu = cpu_seconds(broker.pid) - cpu_before
        time.sleep(0.5)
        rss_after = broker.rss_kib()
        many = _fan_in(ctx, broker, "m")
        if not broker.running:
            raise BrokerError(f"{broker.label} exited\n{broker.log_tail(10)}")
        out: dict[str, Any] = {
            "value": many["rate"], "base_rate": base["rate"],
            "rate_ratio": many["rate"] / base["rate"] if base["rate"] else None,
            "subscribe_s": seconds, "subscribe_rate": n / seconds if seconds > 0 else None,
            "subscribe_broker_cpu_s": subscribe_cpu, "refused": refused + refused_base,
            "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "bytes_per_filter": (rss_after - rss_before) * 1024 / n,
            "broker_us_per_msg": many["broker_us_per_msg"], "base_broker_us_per_msg": base["broker_us_per_msg"],
            "lost": base["lost"] + many["lost"], "expected": base["expected"] + many["expected"],
            "duplicates": 0, "protocol_errors": base["protocol_errors"] + many["protocol_errors"],
        }
        if out["refused"]:
            out["error"] = f"{out['refused']} filters refused in SUBACK"
        return out
    finally:
        for client in clients:
            client.close()
        broker.stop()


# --- 3. persistent sessions with queued messages, restart, reconnect storm


class _SessionClient(asyncio.Protocol):
    """A clean-session-0 QoS 1 subscriber: acknowledges every PUBLISH, records what it saw."""

    def __init__(self, storm: _Storm, client_id: str, clean: bool = False) -> None:
        self.storm = storm
        self.client_id = client_id
        self.clean = clean
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.suback: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same write/close.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(connect_packet(self.client_id, self.clean))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        acks = []
        for first, body in take_packets(self.buf):
            kind = first >> 4
            if kind == 3:
                _, pid, payload = parse_publish(first, body)
                if pid:
                    acks.append(b"\x40\x02" + pid.to_bytes(2, "big"))
                self.storm.received(payload)
            elif kind == 2 and not self.connack.done():
                self.connack.set_result(body)
            elif kind == 9 and not self.suback.done():
                self.suback.set_result(body)
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.connack, self.suback):
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.client_id}: closed ({exc})"))
                fut.exception()  # seen: a future nobody waits for any more is not an error to log
        if not self.closed.done():
            self.closed.set_result(None)


class _Storm:
    """Counts the queued messages as they arrive (payload "i:k", distinct per message)."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.duplicates = 0
        self.last = 0.0
        self.expected = 0
        self.done = asyncio.Event()

    def received(self, payload: bytes) -> None:
        key = payload.rstrip(b".")
        if key in self.seen:
            self.duplicates += 1
            return
        self.seen.add(key)
        self.last = time.monotonic()
        if len(self.seen) >= self.expected:
            self.done.set()


async def _connect_all(port: int, storm: _Storm, ids: list[str], subscribe: list[str] | None
                       ) -> tuple[list[_SessionClient], int]:
    """Connect every id (CONNECT_CONCURRENCY at a time); returns the clients and how many had a session."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    present = 0

    async def one(i: int, client_id: str) -> _SessionClient:
        nonlocal present
        async with gate:
            client = _SessionClient(storm, client_id)
            await loop.create_connection(lambda: client, "127.0.0.1", port)
            connack = await asyncio.wait_for(client.connack, 120)
            if connack[1] != 0:
                raise BrokerError(f"CONNACK refused for {client_id}: {connack.hex()}")
            present += connack[0] & 1
            if subscribe is not None:
                assert client.transport is not None
                client.transport.write(subscribe_packet(1, [subscribe[i]], 1))
                suback = await asyncio.wait_for(client.suback, 120)
                if suback[2] >= 0x80:
                    raise BrokerError(f"SUBSCRIBE refused for {client_id}")
            return client

    clients = await asyncio.gather(*(one(i, cid) for i, cid in enumerate(ids)))
    return list(clients), present


async def _disconnect_all(clients: list[_SessionClient]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.write(DISCONNECT)
            client.transport.close()
    await asyncio.gather(*(c.closed for c in clients), return_exceptions=True)


async def _wait_accepting(port: int, deadline: float) -> float:
    """Seconds until a CONNECT on ``port`` gets its CONNACK (polled every 10 ms)."""
    started = time.monotonic()
    while True:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
            try:
                writer.write(connect_packet("restart-probe", True))
                header = await asyncio.wait_for(reader.readexactly(4), 5.0)
                if header[0] >> 4 == 2 and header[3] == 0:
                    return time.monotonic() - started
            finally:
                writer.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        if time.monotonic() > deadline:
            raise BrokerError(f"no CONNACK on port {port} within {deadline - started:.0f}s of the restart")
        await asyncio.sleep(0.01)


async def _sessions(ctx: Context, broker: Broker) -> dict[str, Any]:
    n, q = ctx.params.sessions, ctx.params.queued
    ids = [f"sess-{ctx.tag}-{i}" for i in range(n)]
    topics = [f"sess/{ctx.tag}/{i}" for i in range(n)]
    storm = _Storm()

    started = time.monotonic()
    clients, _ = await _connect_all(broker.port, storm, ids, topics)
    await _disconnect_all(clients)
    subscribe_s = time.monotonic() - started

    def publish() -> tuple[int, float]:
        t0 = time.monotonic()
        pub = Client(broker.port, f"sess-{ctx.tag}-pub")
        acked = publish_all(pub, ((topics[i], _payload(f"{i}:{k}")) for k in range(q) for i in range(n)), 1)
        pub.close()
        return acked, time.monotonic() - t0

    acked, publish_s = await asyncio.to_thread(publish)
    await asyncio.sleep(0.5)
    rss_before_restart = broker.rss_kib()

    t0 = time.monotonic()
    broker.stop()  # SIGTERM: a graceful stop
    stop_s = time.monotonic() - t0

    launched = time.monotonic()
    broker.launch()
    restart_s = await _wait_accepting(broker.port, launched + 120)
    await asyncio.sleep(0.2)
    rss_after_restart = broker.rss_kib()

    storm.expected = n * q
    cpu_broker, cpu_self = cpu_seconds(broker.pid), own_cpu_seconds()
    storm_started = time.monotonic()
    clients, present = await _connect_all(broker.port, storm, ids, None)
    connected_s = time.monotonic() - storm_started
    while not storm.done.is_set():
        seen = len(storm.seen)
        try:
            await asyncio.wait_for(storm.done.wait(), IDLE_TIMEOUT)
        except asyncio.TimeoutError:
            if len(storm.seen) == seen:
                break  # nothing new for IDLE_TIMEOUT: the rest is lost
    deliver_s = (storm.last or time.monotonic()) - storm_started
    broker_cpu = cpu_seconds(broker.pid) - cpu_broker
    driver_cpu = own_cpu_seconds() - cpu_self
    await _disconnect_all(clients)
    return {
        "restart_s": restart_s, "value": restart_s, "storm_s": deliver_s, "storm_connect_s": connected_s,
        "stop_s": stop_s, "subscribe_s": subscribe_s, "publish_s": publish_s, "acked": acked,
        "sessions_present": present, "expected": n * q, "lost": n * q - len(storm.seen),
        "duplicates": storm.duplicates, "storm_broker_cpu_s": broker_cpu, "storm_driver_cpu_s": driver_cpu,
        "rss_before_restart_kib": rss_before_restart, "rss_after_restart_kib": rss_after_restart,
        "storm_rate": len(storm.seen) / deliver_s if deliver_s > 0 else None,
    }


def _run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_sessions(ctx: Context) -> dict[str, Any]:
    broker = ctx.make()
    broker.restartable = True
    try:
        broker.start()
        out: dict[str, Any] = _run_async(_sessions(ctx, broker))
        problems = []
        if out["acked"] != out["expected"]:
            problems.append(f"{out['expected'] - out['acked']} PUBLISHes never acknowledged")
        if out["sessions_present"] != ctx.params.sessions:
            problems.append(f"{ctx.params.sessions - out['sessions_present']} sessions not present after the restart")
        if out["lost"]:
            problems.append(f"{out['lost']} queued messages lost")
        if problems:
            out["error"] = "; ".join(problems)
        return out
    finally:
        broker.stop()


# --- 4. retained messages, then a subscription to #


def run_retained(ctx: Context) -> dict[str, Any]:
    n = ctx.params.retained
    broker = ctx.make()
    sub: Client | None = None
    try:
        broker.start()
        rss_empty = broker.rss_kib()
        t0 = time.monotonic()
        pub = Client(broker.port, f"ret-{ctx.tag}-pub")
        topics = [f"ret/{ctx.tag}/{i // 1000}/{i}" for i in range(n)]
        acked = publish_all(pub, ((t, _payload(str(i))) for i, t in enumerate(topics)), 1, retain=True)
        pub.close()
        publish_s = time.monotonic() - t0
        time.sleep(0.5)
        rss_before = broker.rss_kib()
        peak = PeakRSS(broker.pid)
        cpu_broker, cpu_self = cpu_seconds(broker.pid), own_cpu_seconds()
        sub = Client(broker.port, f"ret-{ctx.tag}-sub")
        sub.sock.settimeout(IDLE_TIMEOUT)
        started = time.monotonic()
        sub.sock.sendall(subscribe_packet(1, ["#"], 0))
        seen: set[str] = set()
        duplicates = not_retained = 0
        last = started
        try:
            while len(seen) < n:
                for first, body in sub.read():
                    if first >> 4 != 3:
                        continue
                    topic, _, _ = parse_publish(first, body)
                    if topic in seen:
                        duplicates += 1
                    seen.add(topic)
                    not_retained += not first & 1
                    last = time.monotonic()
        except (TimeoutError, socket.timeout):
            pass  # nothing for IDLE_TIMEOUT: the rest is lost
        deliver_s = last - started
        broker_cpu = cpu_seconds(broker.pid) - cpu_broker
        driver_cpu = own_cpu_seconds() - cpu_self
        rss_peak = peak.stop()
        out: dict[str, Any] = {
            "value": deliver_s, "publish_s": publish_s, "acked": acked, "expected": n, "lost": n - len(seen),
            "duplicates": duplicates, "not_retained": not_retained,
            "rss_empty_kib": rss_empty, "rss_before_kib": rss_before, "rss_peak_kib": rss_peak,
            "deliver_rate": len(seen) / deliver_s if deliver_s > 0 else None,
            "broker_cpu_s": broker_cpu, "driver_cpu_s": driver_cpu,
        }
        problems = []
        if acked != n:
            problems.append(f"{n - acked} retained PUBLISHes never acknowledged")
        if out["lost"]:
            problems.append(f"{out['lost']} retained messages not delivered")
        if not_retained:
            problems.append(f"{not_retained} delivered without the retain flag")
        if problems:
            out["error"] = "; ".join(problems)
        return out
    finally:
        if sub is not None:
            sub.close()
        broker.stop()


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "scale-idle": run_idle,
    "scale-subs": run_subscriptions,
    "scale-sessions": run_sessions,
    "scale-retained": run_retained,
}

# The report's rows per scenario: (figure, label, unit)
ROWS: dict[str, list[tuple[str, str, str]]] = {
    "scale-idle": [("value", "memory per connection", "KiB/conn"),
                   ("connect_rate", "connections set up", "conn/s"),
                   ("rss_after_kib", "VmRSS with all connections", "MiB")],
    "scale-subs": [("base_rate", "QoS 0 fan-in with 100 other filters", "msg/s"),
                   ("value", "QoS 0 fan-in with the filters", "msg/s"),
                   ("rate_ratio", "with the filters ÷ with 100", "×"),
                   ("subscribe_s", "time to subscribe them", "s"),
                   ("bytes_per_filter", "memory per filter", "B"),
                   ("rss_after_kib", "VmRSS with the filters", "MiB")],
    "scale-sessions": [("restart_s", "restart until CONNACK", "s"),
                       ("storm_s", "reconnect storm until every queued message arrived", "s"),
                       ("storm_rate", "queued messages delivered in the storm", "msg/s"),
                       ("publish_s", "queueing the messages (QoS 1)", "s"),
                       ("rss_after_restart_kib", "VmRSS after the restart", "MiB")],
    "scale-retained": [("value", "all delivered after SUBSCRIBE #", "s"),
                       ("publish_s", "publishing them (QoS 1)", "s"),
                       ("rss_before_kib", "VmRSS holding them", "MiB"),
                       ("rss_peak_kib", "VmRSS peak during the delivery", "MiB")],
}


def format_figure(value: float | None, unit: str) -> str:
    """A figure as the report shows it (MiB figures are kept in KiB)."""
    if value is None:
        return "—"
    if unit == "MiB":
        return f"{value / 1024:,.1f}"
    if unit in ("s", "×", "µs"):
        return f"{value:.2f}"
    if unit == "KiB/conn":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def scale_scenarios(params: Params) -> list[Scenario]:
    """The four scenarios, in report order (not in the default run: see `--scale`)."""
    p = params
    return [
        Scenario("scale-idle", f"{p.idle_connections:,} idle connections", "scale", text=(
            f"{p.idle_connections:,} MQTT 3.1.1 connections (CONNECT, clean session, keep-alive 300 s) held idle, "
            "half on each of two listeners of the broker (one destination port gives at most the ephemeral port "
            "range of connections), opened by two load generators at once, 100 connects in flight each; broker "
            "VmRSS after minus before, divided by the connections; connections set up per second")),
        Scenario("scale-subs", f"{p.subscriptions:,} subscriptions", "scale", text=(
            f"{p.subscriptions:,} distinct filters (`dev/N/+/temp`, `site/N/#`, `+/N/status`, `fleet/N/sensor/M` "
            f"in turn) over {SUBSCRIBER_CONNECTIONS} connections, {FILTERS_PER_SUBSCRIBE} per SUBSCRIBE, "
            f"{SUBSCRIBE_WINDOW} SUBSCRIBEs unanswered at most per connection; none matches the load's topics. "
            f"The QoS 0 fan-in load (`qos0`) runs once with {BASELINE_FILTERS} such filters held, then again after "
            "all the others were subscribed: a matcher whose cost grows with non-matching filters falls behind")),
        Scenario("scale-sessions", f"{p.sessions:,} persistent sessions, restart", "scale", text=(
            f"{p.sessions:,} clean-session-0 subscribers, each on a topic of its own at QoS 1, disconnect; "
            f"{p.queued} QoS 1 messages are queued for each ({p.sessions * p.queued:,} in all, {PUBLISH_WINDOW} "
            "unacknowledged at most); the broker is stopped with SIGTERM and started again on the same data; "
            "restart: from the process start until a CONNECT gets its CONNACK (polled every 10 ms); then all "
            f"reconnect at once ({CONNECT_CONCURRENCY} connects in flight), clean session 0: time until every "
            "queued message arrived, each checked by its payload")),
        Scenario("scale-retained", f"{p.retained:,} retained messages", "scale", text=(
            f"{p.retained:,} retained QoS 1 messages on distinct topics (`ret/TAG/K/N`, 1000 per level), then one "
            "client subscribes to `#` at QoS 0: time from the SUBSCRIBE until all arrived (each topic checked), "
            "broker VmRSS before and its peak during the delivery (sampled every 20 ms)")),
    ]
