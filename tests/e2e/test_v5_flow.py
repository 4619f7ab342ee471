"""MQTT 5 session expiry, message expiry, topic aliases, Receive Maximum, Maximum Packet Size."""

from __future__ import annotations

import time

import pytest

from . import mqttraw as r
from .pahoclient import prop, publish_props

# --------------------------------------------------------------------------- session expiry


def _persistent(raw, client_id, expiry, clean=True, target=None):
    client = raw(5, target=target)
    connack = client.connect(client_id, clean=clean, properties={r.SESSION_EXPIRY_INTERVAL: expiry})
    assert connack.reason_code == 0
    return client, connack


def test_session_kept_within_expiry_interval(raw, paho, uid):
    client, _ = _persistent(raw, uid, 60)
    client.subscribe([(f"{uid}/t", 1)])
    client.disconnect()
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/t", b"while away", 1)
    client, connack = _persistent(raw, uid, 60, clean=False)
    assert connack.session_present
    assert client.expect(r.PUBLISH).payload == b"while away"


def test_session_expiry_zero_ends_session_at_disconnect(raw, paho, uid):
    client, _ = _persistent(raw, uid, 0)
    client.subscribe([(f"{uid}/t", 1)])
    client.disconnect()
    client, connack = _persistent(raw, uid, 0, clean=False)
    assert not connack.session_present
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/t", b"nobody listens", 1)
    assert client.collect(0.3) == []


def test_session_expires_after_interval(raw, uid):
    client, _ = _persistent(raw, uid, 1)
    client.subscribe([(f"{uid}/t", 1)])
    client.close()
    time.sleep(2.2)
    _, connack = _persistent(raw, uid, 60, clean=False)
    assert not connack.session_present


def test_disconnect_can_shorten_session_expiry(raw, uid):
    client, _ = _persistent(raw, uid, 60)
    client.subscribe([(f"{uid}/t", 1)])
    client.disconnect(properties={r.SESSION_EXPIRY_INTERVAL: 0})
    _, connack = _persistent(raw, uid, 60, clean=False)
    assert not connack.session_present


def test_clean_start_discards_existing_session(raw, uid):
    client, _ = _persistent(raw, uid, 60)
    client.subscribe([(f"{uid}/t", 1)])
    client.disconnect()
    _, connack = _persistent(raw, uid, 60, clean=True)
    assert not connack.session_present


def test_paho_v5_persistent_session(paho, uid):
    client = paho(uid, 5)
    client.connect(clean_start=True, SessionExpiryInterval=60)
    client.subscribe(f"{uid}/t", 2)
    client.disconnect()
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    for i in range(3):
        pub.publish(f"{uid}/t", f"m{i}".encode(), 2)
    again = paho(uid, 5)
    result = again.connect(clean_start=False, SessionExpiryInterval=60)
    assert result.session_present
    assert [m.payload for m in again.expect_messages(3)] == [b"m0", b"m1", b"m2"]


# --------------------------------------------------------------------------- message expiry


def test_message_expiry_forwarded_to_live_subscriber(paho, uid):
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/t", 1)
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/t", b"x", 1, properties=publish_props(MessageExpiryInterval=60))
    [msg] = sub.expect_messages(1)
    assert 59 <= prop(msg, "MessageExpiryInterval") <= 60


def test_retained_message_expiry_remaining_time_and_removal(paho, uid):
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/r/aging", b"aging", 1, retain=True, properties=publish_props(MessageExpiryInterval=30))
    pub.publish(f"{uid}/r/short", b"short-lived", 1, retain=True, properties=publish_props(MessageExpiryInterval=1))
    time.sleep(2.1)
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/r/+", 1)
    [msg] = sub.expect_messages(1)  # the expired one is gone
    assert msg.payload == b"aging"
    assert 25 <= prop(msg, "MessageExpiryInterval") <= 28  # 30 minus the ~2 s it was stored


def test_expired_message_not_delivered_to_reconnecting_session(raw, paho, uid):
    client, _ = _persistent(raw, uid, 300)
    client.subscribe([(f"{uid}/t", 1)])
    client.disconnect()
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/t", b"expires", 1, properties=publish_props(MessageExpiryInterval=1))
    pub.publish(f"{uid}/t", b"lasts", 1, properties=publish_props(MessageExpiryInterval=100))
    pub.publish(f"{uid}/t", b"forever", 1)
    time.sleep(2.1)
    client, connack = _persistent(raw, uid, 300, clean=False)
    assert connack.session_present
    got = [client.expect(r.PUBLISH), client.expect(r.PUBLISH)]
    assert [p.payload for p in got] == [b"lasts", b"forever"]
    assert 95 <= got[0].properties[r.MESSAGE_EXPIRY_INTERVAL] <= 98
    assert r.MESSAGE_EXPIRY_INTERVAL not in got[1].properties
    assert client.collect(0.3) == []


# --------------------------------------------------------------------------- topic aliases


def test_inbound_topic_alias(raw, paho, uid):
    sub = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/#", 1)
    pub = raw(5)
    connack = pub.connect(f"{uid}-pub")
    assert connack.properties.get(r.TOPIC_ALIAS_MAXIMUM, 0) >= 2
    pub.publish(f"{uid}/long/sensor/topic", b"1", 1, properties={r.TOPIC_ALIAS: 1})
    pub.publish("", b"2", 1, properties={r.TOPIC_ALIAS: 1})
    pub.publish(f"{uid}/other", b"3", 1, properties={r.TOPIC_ALIAS: 2})
    pub.publish("", b"4", 1, properties={r.TOPIC_ALIAS: 1})
    pub.publish(f"{uid}/remapped", b"5", 1, properties={r.TOPIC_ALIAS: 1})  # a new mapping for alias 1
    pub.publish("", b"6", 1, properties={r.TOPIC_ALIAS: 1})
    got = [(m.topic, m.payload) for m in sub.expect_messages(6)]
    assert got == [
        (f"{uid}/long/sensor/topic", b"1"), (f"{uid}/long/sensor/topic", b"2"), (f"{uid}/other", b"3"),
        (f"{uid}/long/sensor/topic", b"4"), (f"{uid}/remapped", b"5"), (f"{uid}/remapped", b"6"),
    ]
    # Aliases are per connection: the broker must not leak the publisher's alias to the subscriber.
    assert all(prop(m, "TopicAlias") is None for m in sub.messages)


def test_inbound_topic_alias_above_maximum_disconnects_0x94(raw, uid):
    client = raw(5)
    maximum = client.connect(uid).properties.get(r.TOPIC_ALIAS_MAXIMUM, 0)
    client.send(r.publish_packet(f"{uid}/t", b"", 0, version=5, properties={r.TOPIC_ALIAS: maximum + 1}))
    assert [(p.type, p.reason_code) for p in client.wait_closed()] == [(r.DISCONNECT, 0x94)]


OUTBOUND_ALIASES = "mosquitto 2.0.11 never assigns topic aliases to the messages it sends"


@pytest.mark.ours_only(OUTBOUND_ALIASES)
def test_outbound_topic_aliases_assigned_within_client_maximum(raw, paho, uid):
    sub = raw(5)
    sub.connect(f"{uid}-sub", properties={r.TOPIC_ALIAS_MAXIMUM: 2})
    sub.subscribe([(f"{uid}/#", 1)])
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    long_topic = f"{uid}/building-7/floor-3/room-12/temperature"
    topics = [long_topic, long_topic, long_topic, f"{uid}/b/long-topic-name", f"{uid}/c/long-topic-name", long_topic]
    for i, topic in enumerate(topics):
        pub.publish(topic, str(i).encode(), 1)
    aliases: dict[int, str] = {}
    resolved = []
    saw_empty_topic = False
    for _ in topics:
        pkt = sub.expect(r.PUBLISH)
        sub.ack(pkt)
        alias = pkt.properties.get(r.TOPIC_ALIAS)
        if alias is not None:
            assert 1 <= alias <= 2, f"alias {alias} outside the client's maximum of 2"
            if pkt.topic:
                aliases[alias] = pkt.topic
            else:
                saw_empty_topic = True
                assert alias in aliases, f"alias {alias} used before it was set"
        else:
            assert pkt.topic, "empty topic without an alias"
        resolved.append((aliases[alias] if alias and not pkt.topic else pkt.topic, pkt.payload))
    assert resolved == [(topic, str(i).encode()) for i, topic in enumerate(topics)]
    assert saw_empty_topic, "the repeated long topic was never sent as an alias alone"


@pytest.mark.ours_only(OUTBOUND_ALIASES)
def test_outbound_topic_aliases_seen_by_paho(paho, uid):
    sub = paho(f"{uid}-sub", 5)
    sub.connect(TopicAliasMaximum=5)
    sub.subscribe(f"{uid}/#", 1)
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    topic = f"{uid}/a/rather/long/topic/name/for/a/small/device"
    for i in range(3):
        pub.publish(topic, str(i).encode(), 1)
    messages = sub.expect_messages(3)
    alias = prop(messages[0], "TopicAlias")
    assert messages[0].topic == topic and alias is not None and 1 <= alias <= 5
    # paho hands the empty topic through; the alias maps it back.
    assert [(m.topic, prop(m, "TopicAlias")) for m in messages[1:]] == [("", alias), ("", alias)]


def test_no_outbound_aliases_without_client_topic_alias_maximum(raw, paho, uid):
    sub = raw(5)
    sub.connect(f"{uid}-sub")  # Topic Alias Maximum absent = 0
    sub.subscribe([(f"{uid}/#", 0)])
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    for _ in range(3):
        pub.publish(f"{uid}/a/long/topic/repeated", b"x", 1)
    packets = [sub.expect(r.PUBLISH) for _ in range(3)]
    assert all(p.topic == f"{uid}/a/long/topic/repeated" and r.TOPIC_ALIAS not in p.properties for p in packets)


# --------------------------------------------------------------------------- Receive Maximum


def test_initial_window_limited_by_client_receive_maximum(raw, paho, uid):
    sub = raw(5)
    sub.connect(f"{uid}-sub", properties={r.RECEIVE_MAXIMUM: 3})
    sub.subscribe([(f"{uid}/t", 1)])
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    for i in range(6):
        pub.publish(f"{uid}/t", str(i).encode(), 1)
    window = sub.collect(0.5)
    assert [p.payload for p in window] == [b"0", b"1", b"2"]


@pytest.mark.ours_only("mosquitto 2.0.11 sends a whole new window after one acknowledgement (6 in flight for 3)")
def test_broker_respects_client_receive_maximum(raw, paho, uid):
    sub = raw(5)
    sub.connect(f"{uid}-sub", properties={r.RECEIVE_MAXIMUM: 3})
    sub.subscribe([(f"{uid}/t", 2)])
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    for i in range(10):
        pub.publish(f"{uid}/t", str(i).encode(), 1 + i % 2)
    window = sub.collect(0.5)
    assert len(window) == 3, f"{len(window)} unacknowledged messages in flight, maximum is 3"
    received = list(window)
    unacked = list(window)
    while len(received) < 10:
        pkt = unacked.pop(0)
        sub.ack(pkt)  # one slot frees (QoS 2: after PUBCOMP) ...
        more = sub.collect(0.3)
        assert len(more) <= 1, f"{len(more)} new messages for one freed slot"
        received += more
        unacked += more
        assert len(unacked) <= 3
    for pkt in unacked:
        sub.ack(pkt)
    assert [int(p.payload) for p in received] == list(range(10))


@pytest.mark.ours_only("mosquitto 2.0.11 answers the excess PUBLISH with PUBREC 0x97 instead of DISCONNECT 0x93")
def test_client_exceeding_broker_receive_maximum_disconnected_0x93(raw, uid):
    client = raw(5)
    maximum = client.connect(uid).properties.get(r.RECEIVE_MAXIMUM, 65535)
    assert maximum == 20
    for packet_id in range(1, maximum + 1):  # QoS 2 without PUBREL: all stay in flight
        client.send(r.publish_packet(f"{uid}/t", b"x", 2, packet_id, version=5))
        assert client.expect(r.PUBREC).packet_id == packet_id
    client.send(r.publish_packet(f"{uid}/t", b"one too many", 2, maximum + 1, version=5))
    packets = client.wait_closed()
    assert [(p.type, p.reason_code) for p in packets] == [(r.DISCONNECT, 0x93)]


def test_paho_receive_maximum_with_manual_ack(paho, uid):
    sub = paho(f"{uid}-sub", 5, manual_ack=True)
    sub.connect(ReceiveMaximum=2)
    sub.subscribe(f"{uid}/t", 1)
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    for i in range(5):
        pub.publish(f"{uid}/t", str(i).encode(), 1)
    first = sub.expect_messages(2)
    for msg in first:
        sub.client.ack(msg.mid, msg.qos)
    sub.wait_messages(4)
    for msg in sub.messages[2:4]:
        sub.client.ack(msg.mid, msg.qos)
    msgs = sub.wait_messages(5)
    assert [int(m.payload) for m in msgs] == list(range(5))


# --------------------------------------------------------------------------- Maximum Packet Size


def test_broker_drops_messages_larger_than_client_maximum_packet_size(raw, paho, uid):
    sub = raw(5)
    sub.connect(f"{uid}-sub", properties={r.MAXIMUM_PACKET_SIZE: 200})
    sub.subscribe([(f"{uid}/t", 1)])
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/t", b"x" * 300, 1)
    pub.publish(f"{uid}/t", b"y" * 300, 0)
    pub.publish(f"{uid}/t", b"small", 1)
    packets = sub.collect(0.5)
    assert [p.payload for p in packets] == [b"small"]
    assert all(len(p.raw) <= 200 for p in packets)
    assert sub.is_open()


def _publish_of_size(size: int, packet_id: int) -> bytes:
    """A QoS 1 v5 PUBLISH of exactly ``size`` bytes on the wire."""
    for payload_len in range(size, -1, -1):
        data = r.publish_packet("t", b"a" * payload_len, 1, packet_id, version=5)
        if len(data) == size:
            return data
    raise ValueError(size)


def test_broker_advertises_and_enforces_its_maximum_packet_size(target_factory):
    target = target_factory(max_packet_size=1000)
    client = r.RawClient(target.host, target.port, 5)
    other = r.RawClient(target.host, target.port, 5)
    try:
        connack = client.connect("big-sender")
        assert connack.properties.get(r.MAXIMUM_PACKET_SIZE) == 1000
        other.connect("bystander")
        client.send(_publish_of_size(900, 1))
        assert client.expect(r.PUBACK).packet_id == 1
        client.send(_publish_of_size(1500, 2))
        assert [(p.type, p.reason_code) for p in client.wait_closed()] == [(r.DISCONNECT, 0x95)]
        assert other.is_open()
    finally:
        client.close()
        other.close()


@pytest.mark.ours_only("mosquitto 2.0.11 lets a packet a few bytes over max_packet_size through (it counts less than the whole packet)")
def test_maximum_packet_size_counts_the_whole_packet(target_factory):
    target = target_factory(max_packet_size=1000)
    client = r.RawClient(target.host, target.port, 5)
    try:
        client.connect("boundary")
        client.send(_publish_of_size(1000, 1))  # exactly the maximum: accepted
        assert client.expect(r.PUBACK).packet_id == 1
        client.send(_publish_of_size(1001, 2))
        assert [(p.type, p.reason_code) for p in client.wait_closed()] == [(r.DISCONNECT, 0x95)]
    finally:
        client.close()


def test_v311_client_over_broker_maximum_packet_size_is_closed(target_factory):
    target = target_factory(max_packet_size=1000)
    client = r.RawClient(target.host, target.port, 4)
    other = r.RawClient(target.host, target.port, 4)
    try:
        client.connect("big-v3")
        other.connect("bystander")
        client.send(r.publish_packet("t", b"a" * 1500, 0))
        assert client.wait_closed() == []
        assert other.is_open()
    finally:
        client.close()
        other.close()


def test_paho_sees_broker_maximum_packet_size(target_factory, paho):
    target = target_factory(max_packet_size=4096)
    client = paho("paho-mps", 5, target=target)
    result = client.connect()
    assert getattr(result.properties, "MaximumPacketSize", None) == 4096


# --------------------------------------------------------------------------- in-flight limit


def test_outbound_inflight_bounded_by_max_inflight_messages(target_factory, version):
    target = target_factory(max_inflight_messages=5)
    sub = r.RawClient(target.host, target.port, version)
    pub = r.RawClient(target.host, target.port, version)
    try:
        connack = sub.connect("slow-reader")  # v5: no Receive Maximum of its own (65535)
        if version == 5:
            assert connack.properties.get(r.RECEIVE_MAXIMUM) == 5  # what we advertise follows the limit
        sub.subscribe([("work", 1)])
        pub.connect("producer")
        for i in range(8):
            pub.publish("work", str(i).encode(), 1)
        window = sub.collect(0.5)
        assert [p.payload for p in window] == [str(i).encode() for i in range(5)]
        for pkt in window:
            sub.ack(pkt)
        rest = sub.collect(0.5)
        assert [p.payload for p in rest] == [b"5", b"6", b"7"]
    finally:
        sub.close()
        pub.close()
