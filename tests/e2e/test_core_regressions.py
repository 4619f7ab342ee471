"""Regression tests for defects found by trying the broker with other people's clients.

Each test failed before its fix (issue 8): a resuming session losing a pipelined
message, an outbound topic alias registered for a message that was then not sent, a
final DISCONNECT lost to a TCP reset, and server topic aliases that were never reused.
"""

from __future__ import annotations

import time

import pytest

from . import mqttraw as r

EXPIRY = {r.SESSION_EXPIRY_INTERVAL: 3600}


def _persistent(target, client_id, version, topic, qos=1):
    client = r.RawClient(target.host, target.port, version)
    connack = client.connect(client_id, clean=False, properties=EXPIRY if version == 5 else None)
    assert connack.reason_code == 0
    client.subscribe([(topic, qos)])
    return client


@pytest.mark.parametrize("resume_expiry", [3600, 0], ids=["keeps-expiry", "expiry-0"])
@pytest.mark.parametrize("backlog", [0, 3, 600], ids=["empty-queue", "short-queue", "long-queue"])
def test_pipelined_connect_and_publish_reaches_the_resumed_session(target, uid, version, backlog, resume_expiry):
    """CONNECT (clean start 0) and a QoS 1 PUBLISH to the session's own subscription in one
    write: the PUBACK promises the message, so the resumed session must receive it too.

    v5 ``expiry-0``: the client resumes without a Session Expiry Interval (MQTT.js's
    default), so the resumed session ends with this connection while its stored queue
    is still being read."""
    if version != 5 and resume_expiry == 0:
        pytest.skip("v3.1.1 has no session expiry")
    topic = f"{uid}/race/t"
    client = _persistent(target, uid, version, topic)
    client.disconnect()
    if backlog:
        feeder = r.RawClient(target.host, target.port, version)
        feeder.connect(f"{uid}-feeder")
        for i in range(backlog):
            feeder.publish(topic, f"old{i}".encode(), 1)
        feeder.disconnect()
    client = r.RawClient(target.host, target.port, version)
    props = {r.SESSION_EXPIRY_INTERVAL: resume_expiry} if version == 5 and resume_expiry else None
    client.send(
        r.connect_packet(uid, version, clean=False, properties=props)
        + r.publish_packet(topic, b"pipelined", 1, packet_id=7, version=version)
    )
    connack = client.expect(r.CONNACK)
    assert connack.session_present
    got: list[bytes] = []
    acked = False
    deadline = time.monotonic() + 20
    while (not acked or b"pipelined" not in got) and time.monotonic() < deadline:
        pkt = client.recv(timeout=max(0.1, deadline - time.monotonic()))
        if pkt is None:
            break
        if pkt.type == r.PUBACK and pkt.packet_id == 7:
            acked = True
        elif pkt.type == r.PUBLISH:
            client.ack(pkt)
            got.append(pkt.payload)
    assert acked, "the pipelined PUBLISH was not acknowledged"
    assert b"pipelined" in got, f"acknowledged but never delivered to the resumed session ({len(got)} others)"
    assert got[:backlog] == [f"old{i}".encode() for i in range(backlog)], "the stored queue comes first, in order"
    client.disconnect()


@pytest.mark.ours_only("mosquitto 2.0 does not assign server topic aliases")
def test_no_topic_alias_for_a_message_too_large_to_send(target, uid):
    """A v5 subscriber with Topic Alias Maximum 10 and Maximum Packet Size 512 is sent a
    message larger than that (skipped), then small ones: they must not use an alias the
    client never saw."""
    topic = f"{uid}/alias/long-topic-name"
    sub = r.RawClient(target.host, target.port, 5)
    sub.connect(f"{uid}-sub", properties={r.TOPIC_ALIAS_MAXIMUM: 10, r.MAXIMUM_PACKET_SIZE: 512})
    sub.subscribe([(topic, 0)])
    pub = r.RawClient(target.host, target.port, 5)
    pub.connect(f"{uid}-pub")
    pub.publish(topic, b"x" * 2000, 0)
    for i in range(3):
        pub.publish(topic, f"small{i}".encode(), 0)
    seen_aliases: dict[int, str] = {}
    for i in range(3):
        pkt = sub.expect(r.PUBLISH)
        alias = pkt.properties.get(r.TOPIC_ALIAS)
        if pkt.topic:
            if alias is not None:
                seen_aliases[alias] = pkt.topic
            assert pkt.topic == topic
        else:
            assert alias in seen_aliases, f"alias {alias} was never set up with a topic"
        assert pkt.payload == f"small{i}".encode()
    pub.disconnect()
    sub.disconnect()


@pytest.mark.ours_only("mosquitto 2.0 does not assign server topic aliases")
def test_server_topic_aliases_save_bytes_and_are_reused(target, uid):
    """Aliases for short topics too, and the least recently used one reassigned when all
    are taken: every alias-only PUBLISH refers to the topic the alias was last set to."""
    sub = r.RawClient(target.host, target.port, 5)
    sub.connect(f"{uid}-sub", properties={r.TOPIC_ALIAS_MAXIMUM: 2})
    sub.subscribe([(f"{uid}/#", 0)])
    pub = r.RawClient(target.host, target.port, 5)
    pub.connect(f"{uid}-pub")
    topics = [f"{uid}/a", f"{uid}/b", f"{uid}/a", f"{uid}/c", f"{uid}/a", f"{uid}/b", f"{uid}/a"]
    for i, topic in enumerate(topics):
        pub.publish(topic, f"m{i}".encode(), 0)
    aliases: dict[int, str] = {}
    alias_only = 0
    for i, topic in enumerate(topics):
        pkt = sub.expect(r.PUBLISH)
        assert pkt.payload == f"m{i}".encode()
        alias = pkt.properties.get(r.TOPIC_ALIAS)
        assert alias is not None and 1 <= alias <= 2, "every topic gets an alias (all save bytes here)"
        if pkt.topic:
            aliases[alias] = pkt.topic
            assert pkt.topic == topic
        else:
            alias_only += 1
            assert aliases.get(alias) == topic
    # a, b, a(alias), c (reuses b's alias: LRU), a(alias), b (reuses c's), a(alias)
    assert alias_only == 3
    pub.disconnect()
    sub.disconnect()


@pytest.mark.ours_only("mosquitto 2.0.11 closes without letting the client read the DISCONNECT")
def test_disconnect_reason_readable_by_a_client_that_keeps_sending(target_factory, uid):
    """Receive Maximum + 1 QoS 2 PUBLISHes without reading, then read: DISCONNECT 0x93 must
    arrive, not a connection reset that throws it away."""
    target = target_factory()
    client = r.RawClient(target.host, target.port, 5)
    client.connect(uid)
    burst = b"".join(
        r.publish_packet(f"{uid}/q2", b"p" * 64, 2, packet_id=i + 1, version=5) for i in range(21)
    )
    # Keep sending after the violation, as a client that does not read would, all in one
    # write larger than the broker reads at once: input it leaves unread when it closes makes
    # its kernel answer with a reset, and a reset makes the client's kernel discard the
    # DISCONNECT it has not read yet.
    more = r.publish_packet(f"{uid}/more", b"m" * 1000, 0, version=5) * 600
    client.send(burst + more)
    # Read to the end: a lingering close ends with an orderly EOF, never a reset.
    received = bytearray()
    reset = False
    client.sock.settimeout(10)
    while True:
        try:
            chunk = client.sock.recv(65536)
        except ConnectionResetError:
            reset = True
            break
        if not chunk:
            break
        received += chunk
    last = _packets(bytes(received))[-1]
    assert last[0] >> 4 == r.DISCONNECT and last[1][0] == 0x93, f"last packet {last!r}"
    assert not reset, "the broker reset the connection: a client reading later loses the DISCONNECT"
    client.close()


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte, body) of each complete packet in ``data``."""
    out = []
    i = 0
    while i < len(data):
        first = data[i]
        length, shift, i = 0, 0, i + 1
        while True:
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append((first, data[i:i + length]))
        i += length
    return out
