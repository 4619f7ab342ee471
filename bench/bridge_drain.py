"""How fast a bridge drains its store-and-forward backlog into a local mosquitto.

Run from the repository root:

    python bench/bridge_drain.py --messages 200000            # v3.1.1 upstream, window 20
    python bench/bridge_drain.py --messages 200000 --version 5
    python bench/bridge_drain.py --messages 50000 --qos 2

Not a CI test (the figure depends on the machine and its disk). Steps:

1. A mosquitto (persistence on, unlimited queues) gets a persistent subscriber session
   on ``gw1/#``, then stops: the uplink is down.
2. The gateway (``python -m broker``, SQLite ``sync = "full"``) starts with a bridge to
   that port and gets ``--messages`` QoS 1 messages of ``--size`` bytes from local
   publishers: each acknowledged only once on disk, all queued in the bridge's backlog.
3. mosquitto starts again, the subscriber reconnects, the bridge reconnects and drains.
   Drain rate = messages / (last message at the subscriber - "Bridge ... connected").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.brokers import free_port  # noqa: E402
from bench.durability import V311, Broker, Client, Receiver, publish_qos1  # noqa: E402
from broker.protocol.codec import encode, encode_publish  # noqa: E402
from broker.protocol.packets import Pubcomp, Pubrec, Pubrel  # noqa: E402

MOSQUITTO = "/usr/sbin/mosquitto"


class Mosquitto:
    def __init__(self, workdir: Path, port: int) -> None:
        self.port = port
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join([
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence true",
            f"persistence_location {workdir}/",
            "max_queued_messages 0",
            "log_dest none",
        ]) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdin=subprocess.DEVNULL)
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


async def publish_qos2(port: int, topics: list[str], per_topic: int, payload_size: int) -> float:
    """One pipelined QoS 2 publisher (window 20); seconds until the last PUBCOMP."""
    client, _ = await Client.connect(port, "bench-pub-qos2", clean=True)
    jobs = [(t, n) for n in range(per_topic) for t in topics]
    window = asyncio.Semaphore(20)
    done = asyncio.Event()
    completed = 0

    async def read_acks() -> None:
        nonlocal completed
        async for packets in client.packets():
            out = []
            for packet in packets:
                if isinstance(packet, Pubrec):
                    out.append(encode(Pubrel(packet.packet_id), V311))
                elif isinstance(packet, Pubcomp):
                    completed += 1
                    window.release()
            if out:
                client.writer.write(b"".join(out))
            if completed == len(jobs):
                done.set()
                return

    started = time.monotonic()
    reader = asyncio.ensure_future(read_acks())
    for index, (topic, n) in enumerate(jobs):
        await window.acquire()
        payload = f"{topic}:{n}|".encode().ljust(payload_size, b".")
        client.writer.write(encode_publish(topic, payload, 2, False, False, index % 65535 + 1, None, V311))
    await done.wait()
    reader.cancel()
    await client.close()
    return time.monotonic() - started


def gateway_config(port: int, version: str, max_rate: int, qos: int = 1) -> str:
    return f"""
[storage]
sync = "full"

[[bridge]]
name = "cloud"
address = "127.0.0.1:{port}"
protocol_version = "{version}"
client_id = "gateway-bench"
restart_timeout = 1
max_rate = {max_rate}

[[bridge.topic]]
pattern = "sensors/#"
qos = {qos}
local_prefix = "site/"
remote_prefix = "gw1/"
"""


async def run(messages: int, size: int, version: str, max_rate: int, qos: int = 1) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bridge-drain-") as tmp:
        workdir = Path(tmp)
        (workdir / "gw").mkdir()
        (workdir / "up").mkdir()
        upstream = Mosquitto(workdir / "up", free_port())
        await upstream.start()
        sub, _ = await Client.connect(upstream.port, "drain-sub", clean=False)
        await sub.subscribe("gw1/#", 1)
        await sub.close()
        upstream.stop()

        gateway = Broker(workdir / "gw", gateway_config(upstream.port, version, max_rate, qos))
        gateway.start()
        try:
            topics = [f"site/sensors/{i}" for i in range(10)]
            fill_with = publish_qos2 if qos == 2 else publish_qos1
            fill = await fill_with(gateway.port, topics, messages // len(topics), size)
            total = messages // len(topics) * len(topics)

            await upstream.start()
            client, _ = await Client.connect(upstream.port, "drain-sub", clean=False)
            receiver = Receiver(client)
            receiver.expect(total)
            await asyncio.wait_for(receiver.reached.wait(), max(600.0, total / 100))
            done = time.monotonic()
            connected = next(t for t, line in gateway.lines if re.search(r"Bridge cloud connected", line))
            drain = done - connected
            return {"messages": total, "fill_seconds": fill, "fill_rate": total / fill,
                    "drain_seconds": drain, "drain_rate": total / drain}
        finally:
            gateway.stop()
            upstream.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    parser.add_argument("--version", choices=("3.1.1", "5"), default="3.1.1")
    parser.add_argument("--max-rate", type=int, default=0, help="the bridge's max_rate (default 0: no limit)")
    parser.add_argument("--qos", type=int, choices=(1, 2), default=1, help="QoS of the messages (default 1)")
    args = parser.parse_args()
    result = asyncio.run(run(args.messages, args.size, args.version, args.max_rate, args.qos))
    print(f"backlog of {result['messages']} QoS {args.qos} messages of {args.size} bytes, upstream mosquitto "
          f"(MQTT {args.version}), gateway sync=full")
    print(f"  filled in {result['fill_seconds']:.1f} s ({result['fill_rate']:.0f} msg/s acknowledged)")
    print(f"  drained in {result['drain_seconds']:.1f} s ({result['drain_rate']:.0f} msg/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
