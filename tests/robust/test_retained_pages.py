"""Issue 15 item 3: retained messages on SUBSCRIBE go out in pages, with flow control; identical
filters in one SUBSCRIBE are answered once.

A client that never reads sent one SUBSCRIBE with 400 x ``#`` over 10,000
retained messages: 2.0 GB and a 9.2 s stall (mosquitto: 250 MB, 0.5 s).
"""

from __future__ import annotations

import socket

from bench.robustness import PINGREQ, Client, connect, mqtt_string, packet, publish

from .helpers import rss_bytes

RETAINED = 2000


def fill(port: int) -> None:
    publisher = Client(port, timeout=60)
    publisher.send(connect("retainer"))
    publisher.expect(2)
    publisher.send(b"".join(publish(f"site/{i % 20}/dev{i}", b"r" * 200, retain=True) for i in range(RETAINED)))
    publisher.send(PINGREQ)
    publisher.expect(13)
    publisher.close()


def subscribe_many(packet_id: int, topic_filter: str, count: int) -> bytes:
    return packet(0x82, packet_id.to_bytes(2, "big") + (mqtt_string(topic_filter) + b"\x00") * count)


def test_a_client_that_never_reads_cannot_make_the_broker_buffer_every_retained_message(
    broker_factory, canary_factory
) -> None:
    broker = broker_factory()
    fill(broker.port)
    canary = canary_factory(broker.port)
    before = rss_bytes(broker.pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((broker.host, broker.port))
    sock.sendall(connect("hoarder") + subscribe_many(1, "#", 400) + subscribe_many(2, "site/#", 400))
    grown = 0
    result = canary.stop(min_seconds=3.0)  # the broker works through the pages meanwhile
    grown = rss_bytes(broker.pid) - before
    sock.close()
    result.check()
    # Before: 800 x 2,000 PUBLISH packets buffered (hundreds of MB).
    assert grown < 30 << 20, f"RSS grew {grown / 1e6:.0f} MB"


def test_identical_filters_get_their_retained_messages_once(broker_factory) -> None:
    broker = broker_factory()
    fill(broker.port)
    client = Client(broker.port, timeout=30)
    client.send(connect("reader"))
    client.expect(2)
    client.send(subscribe_many(1, "site/3/#", 50))
    suback = client.expect(9)
    assert suback[2:] == b"\x00" * 50
    client.send(PINGREQ)
    topics = []
    while True:
        first, body = client.read_packet()
        if first >> 4 == 13 and len(topics) >= RETAINED // 20:
            break
        if first >> 4 == 3:
            topics.append(body[2 : 2 + int.from_bytes(body[:2], "big")].decode())
    client.send(PINGREQ)
    while True:  # nothing more after a second round trip
        first, body = client.read_packet()
        if first >> 4 == 13:
            break
        topics.append("unexpected")
    client.close()
    assert sorted(topics) == sorted(f"site/3/dev{i}" for i in range(3, RETAINED, 20))
