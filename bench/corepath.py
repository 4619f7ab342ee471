"""CPU cost of the QoS 1 path in the sans-I/O core: ``python -m bench.corepath [--profile]``.

Why: on a shared machine wall-clock rates say more about the neighbours than about the
broker. This drives the core (``Connection`` + ``Engine``, in-memory storage, a fake
transport, no sockets) the way the fan-in scenario does, and reports CPU time per message
(``time.process_time``) for each half of a subscriber's QoS 1 flow:

* intake: a publisher's PUBLISH read, routed and queued for one clean-session subscriber;
* delivery: the subscriber's PUBACK handled and the next PUBLISH to it encoded and written
  (the window of 20 refilled one message at a time, as acknowledgements arrive).

Bytes arrive in chunks of 20 packets, and the event loop runs between chunks, so the
batching of writes is what a real connection gets. ``--profile`` prints cProfile's view.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time

from broker.config import Config
from broker.core.connection import Connection
from broker.core.engine import Engine
from broker.core.transport import DEFAULT_LISTENER
from broker.protocol.codec import PacketReader, encode
from broker.protocol.packets import Connect, Puback, Publish, Subscribe, SubscriptionOptions
from broker.storage.memory import MemoryStorage

CHUNK = 20


class NullTransport:
    """The core's Transport: keeps what is written until the caller takes it."""

    listener = DEFAULT_LISTENER
    peer = "127.0.0.1:1"

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.written.extend(chunks)

    def write_buffer_size(self) -> int:
        return 0

    def close(self, linger: bool = False) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def peer_certificate(self) -> None:
        return None


async def spin() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def measure(messages: int, profile: cProfile.Profile | None) -> dict[str, float]:
    # A queue limit far above the burst: backpressure never holds the publisher, so the two
    # halves are measured apart (in a real run they interleave).
    config = Config(backend="memory", max_queued_messages=10**9, sys_interval=0)
    storage = MemoryStorage()
    await storage.open()
    engine = Engine(config, storage)
    await engine.start()
    sub_t, pub_t = NullTransport(), NullTransport()
    sub, pub = Connection(engine, sub_t), Connection(engine, pub_t)
    sub.data_received(encode(Connect("sub", keepalive=0), 4))
    pub.data_received(encode(Connect("pub", keepalive=0), 4))
    sub.data_received(encode(Subscribe(1, [("bench/#", SubscriptionOptions(qos=1))]), 4))
    await spin()
    sub_t.written.clear()
    payload = b"x" * 64
    publishes = [encode(Publish("bench/t/p0", payload, 1, False, False, i % 65535 + 1), 4) for i in range(messages)]
    chunks = [b"".join(publishes[i:i + CHUNK]) for i in range(0, messages, CHUNK)]
    if profile is not None:
        profile.enable()
    started = time.process_time()
    for chunk in chunks:
        pub.data_received(chunk)
        await spin()
    intake = time.process_time() - started
    # The subscriber got its first window; acknowledge what arrives, CHUNK at a time.
    reader = PacketReader(client_side=True, version=4)
    delivered = 0
    started = time.process_time()
    while delivered < messages:
        data = b"".join(sub_t.written)
        sub_t.written.clear()
        packets = reader.feed(data) if data else []
        if not packets:
            break
        delivered += len(packets)
        acks = b"".join(encode(Puback(p.packet_id), 4) for p in packets)
        sub.data_received(acks)
        await spin()
    delivery = time.process_time() - started
    if profile is not None:
        profile.disable()
    await storage.close()
    return {"messages": messages, "delivered": delivered,
            "intake_us": intake / messages * 1e6, "delivery_us": delivery / max(delivered, 1) * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.corepath", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile run")
    args = parser.parse_args(argv)
    profile = cProfile.Profile(time.process_time) if args.profile else None
    result = asyncio.run(measure(args.messages, profile))
    print(f"{result['messages']} messages, {result['delivered']} delivered: intake {result['intake_us']:.1f} µs CPU"
          f" per message, delivery (PUBACK -> next PUBLISH) {result['delivery_us']:.1f} µs CPU per message")
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
