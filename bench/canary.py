"""A canary client: one QoS 1 message every 100 ms through a broker, and the largest gap between arrivals.

While an attack or a misbehaving client runs, a healthy broker keeps serving
everyone else: the canary's messages keep arriving about every 100 ms and its
PUBACKs come back at once. A stalled event loop or a starved commit path shows
up as a gap. It runs in its own process (``python -m bench.canary HOST PORT``)
so that whatever the test process does cannot delay it; it stops when its
standard input closes and prints one JSON line.

It speaks MQTT 3.1.1 with its own few lines of encoding (not the broker's codec),
so the same canary measures mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def varint(value: int) -> bytes:
    """An MQTT Variable Byte Integer, written without the broker's codec (the tools' own)."""
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    return _packet(0x10, _string("MQTT") + b"\x04\x02" + keepalive.to_bytes(2, "big") + _string(client_id))


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return _packet(0x82, packet_id.to_bytes(2, "big") + _string(topic_filter) + bytes([qos]))


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    return _packet(0x32, _string(topic) + packet_id.to_bytes(2, "big") + payload)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first byte, body) of the next packet; raises IncompleteReadError at EOF."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


@dataclass
class CanaryResult:
    sent: int
    received: int
    acked: int
    max_gap: float  # seconds between two arrivals (or from the last arrival to the stop)
    max_ack: float  # seconds from PUBLISH to its PUBACK
    error: str

    def check(self, limit: float = 1.0) -> None:
        """Assert what a test wants: connected all along, nothing lost, no gap above ``limit``."""
        assert not self.error, f"canary: {self.error}"
        assert self.received >= self.sent - 2 and self.sent >= 5, f"canary lost messages: {self}"
        assert self.max_gap <= limit, f"canary saw a gap of {self.max_gap:.2f} s (limit {limit} s): {self}"
        assert self.max_ack <= limit, f"canary waited {self.max_ack:.2f} s for a PUBACK (limit {limit} s): {self}"


async def run(
    host: str, port: int, interval: float, stop: asyncio.Event, name: str, on_ready=lambda: None
) -> CanaryResult:
    topic = f"canary/{name}"
    arrivals: list[float] = []
    sent_at: dict[int, float] = {}
    result = CanaryResult(0, 0, 0, 0.0, 0.0, "")
    sub_r, sub_w = await asyncio.open_connection(host, port)
    pub_r, pub_w = await asyncio.open_connection(host, port)
    sub_w.write(connect_packet(f"{name}-sub"))
    pub_w.write(connect_packet(f"{name}-pub"))
    for reader in (sub_r, pub_r):
        first, body = await asyncio.wait_for(read_packet(reader), 10)
        if first >> 4 != 2 or body[1] != 0:
            raise RuntimeError(f"canary refused: CONNACK {body!r}")
    sub_w.write(subscribe_packet(1, topic, 1))
    first, _ = await asyncio.wait_for(read_packet(sub_r), 10)
    assert first >> 4 == 9, "expected SUBACK"
    on_ready()

    async def receive() -> None:
        while True:
            first, body = await read_packet(sub_r)
            if first >> 4 == 3:
                arrivals.append(time.monotonic())
                result.received += 1
                topic_len = int.from_bytes(body[:2], "big")
                if first & 0x06:
                    sub_w.write(b"\x40\x02" + body[2 + topic_len : 4 + topic_len])

    async def acks() -> None:
        while True:
            first, body = await read_packet(pub_r)
            if first >> 4 == 4:
                packet_id = int.from_bytes(body[:2], "big")
                started = sent_at.pop(packet_id, None)
                if started is not None:
                    result.acked += 1
                    result.max_ack = max(result.max_ack, time.monotonic() - started)

    tasks = [asyncio.ensure_future(receive()), asyncio.ensure_future(acks())]
    begin = time.monotonic()
    arrivals.append(begin)
    try:
        next_at = begin
        while not stop.is_set():
            for task in tasks:
                if task.done():
                    exc = task.exception()
                    raise RuntimeError(f"connection lost: {exc!r}")
            packet_id = result.sent % 65535 + 1
            sent_at[packet_id] = time.monotonic()
            pub_w.write(publish_packet(topic, str(result.sent).encode(), packet_id))
            result.sent += 1
            next_at += interval
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            except asyncio.TimeoutError:
                pass
        stopped = time.monotonic()
        deadline = stopped + 5
        while (result.received < result.sent or sent_at) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        last = max((a for a in arrivals if a <= stopped), default=begin)
        gaps.append(stopped - last)
        result.max_gap = max(gaps)
        if sent_at:
            oldest = min(sent_at.values())
            result.max_ack = max(result.max_ack, time.monotonic() - oldest)
    except Exception as exc:  # reported, not raised: the test decides
        result.error = str(exc) or repr(exc)
    finally:
        for task in tasks:
            task.cancel()
        for writer in (sub_w, pub_w):
            writer.close()
    return result


class Canary:
    """Runs ``python -m bench.canary`` next to a test; ``stop()`` returns its CanaryResult."""

    def __init__(self, host: str, port: int, interval: float = 0.1, name: str | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-m", "bench.canary", host, str(port), "--interval", str(interval)]
        if name:
            command += ["--name", name]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        line = self.process.stdout.readline() if self.process.stdout else b""
        if not line.startswith(b"ready"):
            self.process.kill()
            err = self.process.stderr.read() if self.process.stderr else b""
            raise RuntimeError(f"canary did not start: {line!r} {err.decode(errors='replace')}")
        self.result: CanaryResult | None = None
        self.started = time.monotonic()

    def stop(self, min_seconds: float = 1.0) -> CanaryResult:
        """Stop and return the result; the canary runs at least ``min_seconds`` (a window to watch)."""
        if self.result is None:
            time.sleep(max(0.0, self.started + min_seconds - time.monotonic()))
            out, err = self.process.communicate(b"", timeout=30)
            lines = out.decode().strip().splitlines()
            if not lines:
                raise RuntimeError(f"canary printed nothing: {err.decode(errors='replace')}")
            self.result = CanaryResult(**json.loads(lines[-1]))
        return self.result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def _main(host: str, port: int, interval: float, name: str) -> CanaryResult:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()  # EOF: the parent wants the result
        stop.set()

    watcher = asyncio.ensure_future(watch_stdin())
    try:
        return await run(host, port, interval, stop, name, lambda: print("ready", flush=True))
    except Exception as exc:
        print(f"failed {exc!r}", flush=True)
        raise
    finally:
        watcher.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--name", default=f"canary-{os.getpid()}")
    args = parser.parse_args(argv)
    result = asyncio.run(_main(args.host, args.port, args.interval, args.name))
    print(json.dumps(result.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
