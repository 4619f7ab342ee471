"""Issue 15 item 9: QoS 0 is dropped only for a client that is really not reading.

The old rule dropped QoS 0 whenever 1 MiB waited in a client's buffer: one burst
of 200 KB messages did it, and a subscriber reading at full speed lost 9%.
"""

from __future__ import annotations

import socket
import threading
import time

from bench.robustness import PINGREQ, Client, connect, publish, subscribe
from broker.core import slow_consumer
from broker.core.slow_consumer import OutputMeter


def test_the_meter_wants_a_stall_over_time_or_the_hard_bound(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(slow_consumer.time, "monotonic", lambda: clock[0])
    meter = OutputMeter(max_packet_size=1 << 20)
    written = 5 << 20  # handed to the transport
    assert not meter.not_reading(512 << 10, written)  # under the soft bound: never
    assert not meter.not_reading(4 << 20, written)  # 1 MiB drained since the start: progress
    clock[0] += 1.9
    assert not meter.not_reading(4 << 20, written)  # no progress, but not for long
    clock[0] += 0.2
    assert meter.not_reading(4 << 20, written)  # 2.1 s without a byte drained
    written += 1 << 20
    assert not meter.not_reading(4 << 20, written)  # it read 1 MiB: reading again
    written += 20 << 20
    assert meter.not_reading(17 << 20, written)  # reading, but past the hard bound


def test_a_subscriber_that_keeps_reading_loses_nothing(broker_factory, canary_factory) -> None:
    """20 MB/s to a subscriber that reads at full speed but pauses 0.6 s every second
    (a garbage collection, a slow flash write): a momentarily full buffer, no stalled client."""
    broker = broker_factory()
    canary = canary_factory(broker.port)
    count, size = 300, 200_000
    subscriber = Client.__new__(Client)
    subscriber.sock = socket.socket()
    subscriber.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)  # before connect: a small window
    subscriber.sock.settimeout(60)
    subscriber.sock.connect((broker.host, broker.port))
    subscriber.buffer = bytearray()
    subscriber.send(connect("reader"))
    subscriber.expect(2)
    subscriber.send(subscribe(1, ["burst/#"], 0))
    subscriber.expect(9)
    received = []

    def read() -> None:
        sock = subscriber.sock
        buffer = bytearray()
        try:
            while len(received) < count:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 5:  # PUBLISH of 200 KB: 1 + 3 bytes of length
                    length, shift, pos = 0, 0, 1
                    while buffer[pos] & 0x80:
                        length |= (buffer[pos] & 0x7F) << shift
                        shift += 7
                        pos += 1
                    length |= buffer[pos] << shift
                    if len(buffer) < pos + 1 + length:
                        break
                    if buffer[0] >> 4 == 3:
                        received.append(length)
                    del buffer[: pos + 1 + length]
                if int(time.monotonic() * 10) % 10 == 0:
                    time.sleep(0.6)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    publisher = Client(broker.port, timeout=60)
    publisher.send(connect("burster"))
    publisher.expect(2)
    burst = publish("burst/t", b"b" * size) * 10
    for _ in range(count // 10):
        publisher.send(burst)
        time.sleep(0.1)
    publisher.send(PINGREQ)
    publisher.expect(13)
    seen, last_change = 0, time.monotonic()
    while len(received) < count and reader.is_alive() and time.monotonic() - last_change < 5:
        if len(received) != seen:
            seen, last_change = len(received), time.monotonic()
        time.sleep(0.05)
    for client in (publisher, subscriber):
        client.close()
    canary.stop().check()
    assert len(received) == count, f"received {len(received)} of {count}"


def test_a_burst_faster_than_the_reader_slows_the_publisher_instead_of_dropping(broker_factory, canary_factory) -> None:
    """100 MB of QoS 0 sent as fast as possible to a subscriber that reads more slowly: the
    publisher is read more slowly too (back-pressure), nothing is lost, memory stays bounded."""
    from bench.robustness import _burst_to_reader

    from .helpers import peak_rss_bytes, rss_bytes

    broker = broker_factory()
    canary = canary_factory(broker.port)
    base = rss_bytes(broker.pid)
    received = _burst_to_reader(broker, 500, 200_000, pause=False, delay=0.003)  # at most 66 MB/s
    peak = peak_rss_bytes(broker.pid) - base
    canary.stop().check()
    assert received == 500, f"received {received} of 500"
    assert peak < 40 << 20, f"peak RSS {peak / 1e6:.0f} MB above the start"
