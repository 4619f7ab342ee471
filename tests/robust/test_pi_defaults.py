"""Issue 15 item 8: defaults a Raspberry Pi survives, and fewer copies of a large message.

The default packet limit was mosquitto's 256 MB, and a connection buffered a
packet's bytes as they came, before CONNECT too: 20 connections announcing a
200 MB CONNECT took 160 MB. The queue of a session had no byte bound.
"""

from __future__ import annotations

import socket
import time

from bench.canary import varint
from broker.config import Config
from e2e.mqttraw import RawClient, publish_packet, subscribe_packet

from .helpers import peak_rss_bytes, rss_bytes


def test_the_defaults_are_bounded() -> None:
    config = Config()
    assert 1 << 20 <= config.max_packet_size <= 4 << 20
    assert 0 < config.max_queued_bytes <= 64 << 20


def test_nothing_larger_than_the_limit_is_buffered_before_connect(broker_factory, canary_factory) -> None:
    broker = broker_factory()
    canary = canary_factory(broker.port)
    before = rss_bytes(broker.pid)
    refused = 0
    sockets = []
    for _ in range(10):
        sock = socket.create_connection((broker.host, broker.port), timeout=10)
        sockets.append(sock)
        try:
            sock.sendall(b"\x10" + varint(100 << 20))  # a CONNECT announcing 100 MB
            for _ in range(4):
                sock.sendall(b"\0" * (1 << 20))
                time.sleep(0.01)
        except OSError:
            refused += 1
    for sock in sockets:
        sock.settimeout(10)
        try:
            assert sock.recv(100) == b""  # closed by the broker
        except ConnectionResetError:
            pass
        sock.close()
    grown = rss_bytes(broker.pid) - before
    canary.stop().check()
    assert grown < 10 << 20, f"RSS grew {grown / 1e6:.0f} MB for 10 announced 100 MB CONNECTs"


def test_a_publish_over_the_default_limit_is_refused_at_its_header(broker_factory) -> None:
    broker = broker_factory()
    with RawClient(broker.host, broker.port, version=5, timeout=10) as client:
        connack = client.connect("big")
        assert connack.properties.get(0x27) == Config().max_packet_size
        header = b"\x30" + varint(3 << 20)
        client.send(header + b"\x00\x01t\x00")  # the rest never comes: the header is enough
        closing = client.wait_closed(10)
        assert [(p.type, p.reason_code) for p in closing] == [(14, 0x95)]


def test_a_large_message_is_held_about_twice_while_relayed(broker_factory) -> None:
    broker = broker_factory(config='[limits]\nmax_packet_size = "64MB"\n')
    size = 40 << 20
    with RawClient(broker.host, broker.port, timeout=60) as subscriber:
        subscriber.connect("big-sub")
        subscriber.subscribe([("big/#", 0)])
        base = rss_bytes(broker.pid)
        with RawClient(broker.host, broker.port, timeout=60) as publisher:
            publisher.connect("big-pub")
            publisher.send(publish_packet("big/blob", b"\x5a" * size))
            message = subscriber.expect(3, timeout=60)
            assert len(message.payload) == size
    peak = peak_rss_bytes(broker.pid) - base
    # The received packet, its payload, the encoded PUBLISH: asyncio's own buffer no longer
    # holds a fourth copy (before: 2.9 times the payload).
    assert peak < 2.5 * size, f"peak {peak / size:.2f} times the payload"
