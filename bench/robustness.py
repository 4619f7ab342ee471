"""Issue 15's attacks, measured the same way on ours and on mosquitto.

    python -m bench.robustness                       # every item, ours (this checkout) and mosquitto
    python -m bench.robustness --item 1 --item 4     # some items
    python -m bench.robustness --ours-src /tmp/old   # "before": ours from another checkout

Each item starts a fresh broker, runs a canary (a QoS 1 message every 100 ms,
``bench/canary.py``) next to the attack, and prints one JSON line per broker:
the canary's largest gap and PUBACK wait, the broker's memory growth, and the
item's own figures. Figures for the report in docs/robustness.md come from here.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.brokers import Broker, MosquittoBroker, OursBroker, raise_nofile_limit, rss_kib
from bench.canary import Canary, varint

NOFILE = raise_nofile_limit(4096)


class SourceBroker(OursBroker):
    """Ours from a given source tree (the default: this checkout), with extra TOML settings."""

    def __init__(self, workdir: Path, src: Path | None, toml: str = "") -> None:
        super().__init__(workdir, NOFILE, ["-c", str(workdir / "ours.toml")] if toml else [])
        self.src = src
        self.toml = toml

    def prepare(self) -> None:
        super().prepare()
        if self.toml:
            (self.workdir / "ours.toml").write_text(self.toml)

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.src is not None:
            env["PYTHONPATH"] = str(self.src)
        return env


class ConfiguredMosquitto(MosquittoBroker):
    def __init__(self, workdir: Path, extra: list[str]) -> None:
        super().__init__(workdir, NOFILE)
        self.extra = extra

    def config_lines(self) -> list[str]:
        return [*super().config_lines(), *self.extra]


# ---- raw MQTT bytes ------------------------------------------------------------------------


def mqtt_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect(client_id: str, version: int = 4, clean: bool = True, keepalive: int = 60, props: bytes = b"\x00") -> bytes:
    flags = 0x02 if clean else 0
    variable = mqtt_string("MQTT") + bytes([version, flags]) + keepalive.to_bytes(2, "big")
    if version == 5:
        variable += props
    return packet(0x10, variable + mqtt_string(client_id))


def subscribe(packet_id: int, filters: list[str], qos: int = 0, version: int = 4) -> bytes:
    body = packet_id.to_bytes(2, "big") + (b"\x00" if version == 5 else b"")
    for topic_filter in filters:
        body += mqtt_string(topic_filter) + bytes([qos])
    return packet(0x82, body)


def unsubscribe(packet_id: int, filters: list[str], version: int = 4) -> bytes:
    body = packet_id.to_bytes(2, "big") + (b"\x00" if version == 5 else b"")
    for topic_filter in filters:
        body += mqtt_string(topic_filter)
    return packet(0xA2, body)


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 1, retain: bool = False, version: int = 4) -> bytes:
    body = mqtt_string(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + (b"\x00" if version == 5 else b"")
    return packet(0x30 | (qos << 1) | (1 if retain else 0), body + payload)


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


class Client:
    """A blocking socket with just enough reading to wait for a packet type."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 60.0, source: str | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_packet(self) -> tuple[int, bytes]:
        while True:
            if len(self.buffer) >= 2:
                length, shift, pos = 0, 0, 1
                while pos < len(self.buffer):
                    byte = self.buffer[pos]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    pos += 1
                    if not byte & 0x80:
                        break
                else:
                    pos = -1
                if pos > 0 and len(self.buffer) >= pos + length:
                    first, body = self.buffer[0], bytes(self.buffer[pos : pos + length])
                    del self.buffer[: pos + length]
                    return first, body
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed by the broker")
            self.buffer += chunk

    def expect(self, kind: int) -> bytes:
        """The body of the next packet of type ``kind`` (others are skipped)."""
        while True:
            first, body = self.read_packet()
            if first >> 4 == kind:
                return body

    def close(self) -> None:
        self.sock.close()


# ---- the items ---------------------------------------------------------------------------------


def item1_deep_filter(broker: Broker, canary: Canary) -> dict:
    """One SUBSCRIBE with a 65 KB filter of 32,768 levels (and three of them)."""
    client = Client(broker.port)
    client.send(connect("deep"))
    client.expect(2)
    started = time.monotonic()
    answers = []
    try:
        for i in range(3):
            deep = (f"{i}/" + "/".join(["a"] * 32768))[:65533]
            client.send(subscribe(i + 1, [deep], 1))
            answers.append(client.expect(9)[2:].hex())
        client.send(PINGREQ)
        client.expect(13)
    except ConnectionError:
        answers.append("connection closed")
    took = time.monotonic() - started
    client.close()
    return {"three_subscribes_s": round(took, 2), "answers": answers}


def takeover_fight(broker: Broker, seconds: float, queued: int = 2000) -> dict:
    """Two devices share a client id (persistent session with ``queued`` stored messages) and
    take the session from each other as fast as they can for ``seconds``."""
    import threading

    device = Client(broker.port)
    device.send(connect("twin", clean=False))
    device.expect(2)
    device.send(subscribe(1, ["twin/#"], 1))
    device.expect(9)
    device.send(DISCONNECT)
    device.close()
    publisher = Client(broker.port)
    publisher.send(connect("filler"))
    publisher.expect(2)
    publisher.send(b"".join(publish(f"twin/{i}", b"q" * 100, qos=1, packet_id=i % 65535 + 1) for i in range(queued)))
    for _ in range(queued):
        publisher.expect(4)
    publisher.close()
    stop = time.monotonic() + seconds
    connects = [0]
    errors: list[str] = []

    def fight(source: str) -> None:
        while time.monotonic() < stop:
            try:
                sock = socket.create_connection((broker.host, broker.port), timeout=5, source_address=(source, 0))
                sock.sendall(connect("twin", clean=False))
                connects[0] += 1
                while sock.recv(65536):
                    if time.monotonic() > stop:
                        break
                sock.close()
            except OSError as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=fight, args=(source,), daemon=True) for source in ("127.0.0.2", "127.0.0.3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return {"connects": connects[0], "errors": len(errors)}


def item2_takeover_fight(broker: Broker, canary: Canary) -> dict:
    """Two devices with one client id fight over its session for 20 s."""
    return takeover_fight(broker, 20.0)


def item3_retained_flood(broker: Broker, canary: Canary) -> dict:
    """10,000 retained messages; a client that never reads sends one SUBSCRIBE with 400 x '#'."""
    publisher = Client(broker.port)
    publisher.send(connect("retainer"))
    publisher.expect(2)
    publisher.send(b"".join(publish(f"site/{i % 100}/dev{i}/temp", b"r" * 100, retain=True) for i in range(10_000)))
    publisher.send(PINGREQ)
    publisher.expect(13)
    publisher.close()
    before = rss_kib(broker.pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((broker.host, broker.port))
    body = (1).to_bytes(2, "big") + (mqtt_string("#") + b"\x00") * 400
    sock.sendall(connect("hoarder") + packet(0x82, body))
    time.sleep(10)
    peak = peak_kib(broker.pid)
    sock.close()
    return {"peak_growth_mb": round((peak - before) / 1024, 1)}


def item4_retained_scan(broker: Broker, canary: Canary) -> dict:
    """10,000 retained messages, then 1,000 wildcard filters that match nothing in one SUBSCRIBE."""
    publisher = Client(broker.port)
    publisher.send(connect("retainer"))
    publisher.expect(2)
    publisher.send(b"".join(publish(f"site/{i % 100}/dev{i}/temp", b"21", retain=True) for i in range(10_000)))
    publisher.send(PINGREQ)
    publisher.expect(13)
    subscriber = Client(broker.port)
    subscriber.send(connect("scanner"))
    subscriber.expect(2)
    started = time.monotonic()
    subscriber.send(subscribe(1, [f"site/+/nothing{i}/#" for i in range(1000)]))
    subscriber.expect(9)
    took = time.monotonic() - started
    for client in (publisher, subscriber):
        client.close()
    return {"suback_after_s": round(took, 3)}


def item5_match_cache(broker: Broker, canary: Canary) -> dict:
    """10,000 QoS 0 publishes to distinct 65 KB topic names; RSS after, and 5 s later."""
    client = Client(broker.port)
    client.send(connect("spray"))
    client.expect(2)
    for batch in range(50):
        client.send(b"".join(publish(f"{batch}/{i}/" + "z" * 65000, b"1") for i in range(200)))
        client.send(PINGREQ)
        client.expect(13)
    client.close()
    after = rss_kib(broker.pid)
    time.sleep(5)
    return {"rss_after_mb": round(after / 1024, 1), "rss_5s_later_mb": round(rss_kib(broker.pid) / 1024, 1)}


def item8_large_messages(broker: Broker, canary: Canary) -> dict:
    """Memory per large message: one 64 MB PUBLISH relayed to a subscriber (peak RSS over the
    payload), then 20 connections that announce a 200 MB CONNECT and send 8 MB of it."""
    figures = item8_relay(broker)
    figures.update(item8_pre_connect(broker))
    return figures


def item8_relay(broker: Broker) -> dict:
    size = 64 << 20
    subscriber = Client(broker.port)
    subscriber.send(connect("big-sub"))
    subscriber.expect(2)
    subscriber.send(subscribe(1, ["big/#"], 0))
    subscriber.expect(9)
    base = rss_kib(broker.pid)
    publisher = Client(broker.port)
    publisher.send(connect("big-pub"))
    publisher.expect(2)
    publisher.send(publish("big/blob", b"\x5a" * size))
    try:
        relayed = len(subscriber.expect(3)) >= size
    except ConnectionError:
        relayed = False
    peak_factor = round((peak_kib(broker.pid) - base) * 1024 / size, 2)
    publisher.close()
    subscriber.close()
    return {"relayed_64mb": relayed, "peak_rss_over_payload": peak_factor}


def item8_pre_connect(broker: Broker, canary: Canary | None = None) -> dict:
    """20 connections announce a 200 MB CONNECT and send 8 MB of it: what is buffered?"""
    before = rss_kib(broker.pid)
    header = b"\x10" + varint(200 << 20)
    sockets, refused = [], 0
    for _ in range(20):
        sock = socket.create_connection((broker.host, broker.port))
        sockets.append(sock)
        try:
            sock.sendall(header)
            for _ in range(8):
                sock.sendall(b"\0" * (1 << 20))
        except OSError:
            refused += 1
    time.sleep(1)
    pre_connect_mb = round((rss_kib(broker.pid) - before) / 1024, 1)
    for sock in sockets:
        sock.close()
    return {"pre_connect_growth_mb": pre_connect_mb, "pre_connect_refused": refused}


def item6_share_cursors(broker: Broker, canary: Canary) -> dict:
    """3,000 subscribe/publish/unsubscribe cycles with 20 KB share group names; RSS after the client left."""
    before = rss_kib(broker.pid)
    client = Client(broker.port)
    client.send(connect("sharer"))
    client.expect(2)
    for batch in range(30):
        data = b""
        for i in range(100):
            group = f"g{batch}-{i}-" + "x" * 20000
            data += subscribe(1, [f"$share/{group}/jobs"], 0) + publish("jobs", b"1") + unsubscribe(2, [f"$share/{group}/jobs"])
        client.send(data + PINGREQ)
        client.expect(13)
    client.send(DISCONNECT)
    client.close()
    time.sleep(1)
    return {"kept_after_leaving_mb": round((rss_kib(broker.pid) - before) / 1024, 1)}


def item11_trickle(broker: Broker, canary: Canary) -> dict:
    """A CONNECT sent one byte every 8 s: how long does the broker keep the socket (48 s at most)?"""
    data = connect("slow")
    sock = socket.create_connection((broker.host, broker.port), timeout=10)
    started = time.monotonic()
    held = None
    for byte in data[:-1]:
        try:
            sock.sendall(bytes([byte]))
            sock.settimeout(8)
            if sock.recv(10) == b"":
                held = time.monotonic() - started
                break
        except TimeoutError:
            pass
        except OSError:
            held = time.monotonic() - started
            break
        if time.monotonic() - started > 48:
            break
    sock.close()
    return {"socket_held_s": round(held, 1) if held is not None else "48+ (still open)"}


def _burst_to_reader(broker: Broker, count: int, size: int, pause: bool, delay: float = 0.0) -> int:
    """Publish ``count`` QoS 0 messages of ``size`` bytes as fast as possible; how many arrive?"""
    import threading

    sub = socket.socket()
    sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sub.settimeout(60)
    sub.connect((broker.host, broker.port))
    reader = Client.__new__(Client)
    reader.sock, reader.buffer = sub, bytearray()
    reader.send(connect("reader"))
    reader.expect(2)
    reader.send(subscribe(1, ["burst/#"], 0))
    reader.expect(9)
    received = [0]

    def read() -> None:
        try:
            while received[0] < count:
                first, _ = reader.read_packet()
                if first >> 4 == 3:
                    received[0] += 1
                    if delay:
                        time.sleep(delay)
                if pause and int(time.monotonic() * 10) % 10 == 0:
                    time.sleep(0.6)
        except OSError:
            pass

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    publisher = Client(broker.port)
    publisher.send(connect("burster"))
    publisher.expect(2)
    message = publish("burst/t", b"b" * size)
    for _ in range(count // 10):
        publisher.send(message * 10)
        if pause:
            time.sleep(0.1)
    seen, last = 0, time.monotonic()
    while received[0] < count and time.monotonic() - last < 5:
        if received[0] != seen:
            seen, last = received[0], time.monotonic()
        time.sleep(0.05)
    publisher.close()
    reader.close()
    return received[0]


def item9_qos0_drops(broker: Broker, canary: Canary) -> dict:
    """2,000 x 200 KB QoS 0 to a subscriber reading at full speed; 300 x 200 KB at 20 MB/s to one
    that pauses 0.6 s every second."""
    full = _burst_to_reader(broker, 2000, 200_000, pause=False)
    paused = _burst_to_reader(broker, 300, 200_000, pause=True)
    return {"full_speed_lost_pct": round(100 * (2000 - full) / 2000, 1), "pausing_lost_pct": round(100 * (300 - paused) / 300, 1)}


def limits_max_connections(broker: Broker, canary: Canary) -> dict:
    """max_connections 5 (the canary holds 2): what do the 4th to 8th MQTT 5 clients get?"""
    answers, clients = [], []
    for i in range(6):
        client = Client(broker.port, timeout=5, source="127.0.0.2")
        clients.append(client)
        try:
            client.send(connect(f"c{i}", 5))
            answers.append(client.expect(2)[:2].hex())
        except (ConnectionError, OSError):
            answers.append("closed")
    for client in clients:
        client.close()
    return {"answers": answers}


FORGED = "2026-01-01 00:00:00 broker: New client connected from 10.0.0.1:1 as admin (p2, c1, k60)."


def item12_log_forgery(broker: Broker, canary: Canary) -> dict:
    """A client id with a newline and a fake log line after it: does the fake line appear?"""
    client = Client(broker.port)
    client.send(connect("dev\n" + FORGED))
    try:
        connack = client.expect(2).hex()
        client.send(DISCONNECT)
    except ConnectionError:
        connack = "connection closed"
    client.close()
    time.sleep(0.5)
    lines = broker.log_path.read_text(errors="replace").splitlines()
    return {"connack": connack, "forged_lines": sum(1 for line in lines if line.startswith(FORGED[:20]))}


ITEMS: dict[int, tuple[Callable[[Broker, Canary], dict], str, list[str]]] = {
    1: (item1_deep_filter, "", []),
    2: (item2_takeover_fight, "", []),
    3: (item3_retained_flood, "", []),
    4: (item4_retained_scan, "", []),
    5: (item5_match_cache, "", []),
    6: (item6_share_cursors, "", []),
    8: (item8_large_messages, "[limits]\nmax_packet_size = 268435455\n", []),
    80: (item8_pre_connect, "", []),  # item 8 with every default
    9: (item9_qos0_drops, "", []),
    11: (item11_trickle, "", []),
    12: (item12_log_forgery, "", []),
    90: (limits_max_connections, "[limits]\nmax_connections = 5\n", ["max_connections 5"]),
}


def measure(item: int, make: Callable[[Path, str, list[str]], Broker], workdir: Path) -> dict:
    attack, toml, mosquitto_extra = ITEMS[item]
    broker = make(workdir, toml, mosquitto_extra)
    broker.start()
    try:
        canary = Canary(broker.host, broker.port)
        before = rss_kib(broker.pid)
        try:
            figures = attack(broker, canary)
        finally:
            result = canary.stop()
        figures.update(
            rss_growth_mb=round((rss_kib(broker.pid) - before) / 1024, 1),
            peak_rss_mb=round(peak_kib(broker.pid) / 1024, 1),
            canary_max_gap_s=round(result.max_gap, 2),
            canary_max_ack_s=round(result.max_ack, 2),
            canary_lost=result.sent - result.received,
            canary_error=result.error,
            alive=broker.running,
        )
        return figures
    finally:
        broker.stop()


def peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="issue 15 attacks: ours vs mosquitto")
    parser.add_argument("--item", type=int, action="append", choices=sorted(ITEMS))
    parser.add_argument("--broker", action="append", choices=("ours", "mosquitto"))
    parser.add_argument("--ours-src", type=Path, help="run ours from this source tree (e.g. a checkout of the old commit)")
    args = parser.parse_args(argv)
    brokers = args.broker or ["ours", "mosquitto"]
    with tempfile.TemporaryDirectory(prefix="robustness-") as tmp:
        for item in args.item or sorted(ITEMS):
            for key in brokers:
                workdir = Path(tmp) / f"{key}-{item}"
                if key == "ours":
                    make: Callable[[Path, str, list[str]], Broker] = lambda w, toml, _m: SourceBroker(w, args.ours_src, toml)
                else:
                    make = lambda w, _t, extra: ConfiguredMosquitto(w, extra)
                try:
                    figures = measure(item, make, workdir)
                except Exception as exc:
                    figures = {"error": repr(exc)}
                label = key if key != "ours" or not args.ours_src else f"ours@{args.ours_src}"
                print(json.dumps({"item": item, "broker": label, **figures}), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
