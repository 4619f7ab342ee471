"""PUBLISH at QoS 0/1/2 in both directions: packet ids, min(QoS), ordering, exactly once."""

from __future__ import annotations

import os

import pytest

from . import mqttraw as r


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_delivered_at_each_qos(paho, uid, version, qos):
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    assert sub.subscribe(f"{uid}/t", qos) == [qos]
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/t", b"hello", qos)
    [msg] = sub.expect_messages(1)
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (f"{uid}/t", b"hello", qos, False)


def test_delivery_qos_is_min_of_publish_and_granted(paho, uid, version):
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    for granted in (0, 1, 2):
        assert sub.subscribe(f"{uid}/g{granted}", granted) == [granted]
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    for granted in (0, 1, 2):
        for qos in (0, 1, 2):
            pub.publish(f"{uid}/g{granted}", f"{qos}".encode(), qos)
    got = {(m.topic, int(m.payload)): m.qos for m in sub.expect_messages(9)}
    assert got == {
        (f"{uid}/g{granted}", qos): min(qos, granted) for granted in (0, 1, 2) for qos in (0, 1, 2)
    }


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_messages_arrive_in_publish_order(paho, uid, version, qos):
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/order", 2)
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    count = 60
    mids = [pub.publish(f"{uid}/order", str(i).encode(), qos, wait=False) for i in range(count)]
    pub.wait_for(lambda: qos == 0 or all(m in pub.pubacks for m in mids), what="all acknowledgements")
    got = [int(m.payload) for m in sub.expect_messages(count)]
    assert got == list(range(count))
    assert {m.qos for m in sub.messages} == {qos}


def test_large_payload_round_trip(paho, uid, version):
    payload = os.urandom(300_000)
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/big", 1)
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/big", payload, 1)
    [msg] = sub.expect_messages(1)
    assert msg.payload == payload


def test_empty_payload_delivered(paho, uid, version):
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/empty", 1)
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/empty", b"", 1)
    [msg] = sub.expect_messages(1)
    assert msg.payload == b""


def test_publisher_acknowledgements_carry_its_packet_ids(raw, uid, version):
    client = raw(version)
    client.connect(uid)
    client.send(r.publish_packet(f"{uid}/x", b"1", 1, 0x1234, version=version))
    assert client.expect(r.PUBACK).packet_id == 0x1234
    client.send(r.publish_packet(f"{uid}/x", b"2", 2, 0xFFFF, version=version))
    assert client.expect(r.PUBREC).packet_id == 0xFFFF
    client.send(r.ack_packet(r.PUBREL, 0xFFFF, version))
    assert client.expect(r.PUBCOMP).packet_id == 0xFFFF


def test_outbound_packet_ids_distinct_and_flows_complete(raw, paho, uid, version):
    sub = raw(version)
    sub.connect(uid)
    sub.subscribe([(f"{uid}/q1", 1), (f"{uid}/q2", 2)])
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    for i in range(5):
        pub.publish(f"{uid}/q1", f"a{i}".encode(), 1)
        pub.publish(f"{uid}/q2", f"b{i}".encode(), 2)
    received = [sub.expect(r.PUBLISH) for _ in range(10)]  # none acknowledged yet
    ids = [p.packet_id for p in received]
    assert all(ids) and len(set(ids)) == 10, f"packet ids must be non-zero and unique in flight: {ids}"
    assert [p.payload for p in received if p.qos == 1] == [f"a{i}".encode() for i in range(5)]
    assert [p.payload for p in received if p.qos == 2] == [f"b{i}".encode() for i in range(5)]
    for pkt in received:
        if pkt.qos == 1:
            sub.send(r.ack_packet(r.PUBACK, pkt.packet_id, version))
        else:
            sub.send(r.ack_packet(r.PUBREC, pkt.packet_id, version))
    rels = [sub.expect(r.PUBREL) for _ in range(5)]
    assert sorted(p.packet_id for p in rels) == sorted(p.packet_id for p in received if p.qos == 2)
    for rel in rels:
        assert rel.flags == 0x02
        sub.send(r.ack_packet(r.PUBCOMP, rel.packet_id, version))
    assert sub.collect(0.3) == []
    assert sub.is_open()


def test_qos2_resent_publish_before_pubrel_delivered_once(raw, paho, uid, version):
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/once", 2)
    pub = raw(version)
    pub.connect(f"{uid}-pub")
    first = r.publish_packet(f"{uid}/once", b"exactly once", 2, 7, version=version)
    pub.send(first)
    assert pub.expect(r.PUBREC).packet_id == 7
    resent = r.publish_packet(f"{uid}/once", b"exactly once", 2, 7, dup=True, version=version)
    pub.send(resent)
    assert pub.expect(r.PUBREC).packet_id == 7
    pub.send(r.ack_packet(r.PUBREL, 7, version))
    assert pub.expect(r.PUBCOMP).packet_id == 7
    assert [m.payload for m in sub.expect_messages(1)] == [b"exactly once"]
    # After PUBCOMP the packet id is free again: the same id now carries a new message.
    pub.publish(f"{uid}/once", b"a new message", 2, packet_id=7)
    assert [m.payload for m in sub.wait_messages(2)] == [b"exactly once", b"a new message"]


def test_qos2_pubrel_for_unknown_id_is_completed(raw, uid, version):
    client = raw(version)
    client.connect(uid)
    client.send(r.ack_packet(r.PUBREL, 99, version))
    pubcomp = client.expect(r.PUBCOMP)
    assert pubcomp.packet_id == 99
    if version == 5:
        assert pubcomp.reason_code in (0x00, 0x92)  # 0x92: Packet Identifier not found
    assert client.is_open()


def test_qos1_message_to_self(paho, uid, version):
    client = paho(uid, version)
    client.connect()
    client.subscribe(f"{uid}/self", 1)
    client.publish(f"{uid}/self", b"echo", 1)
    assert [m.payload for m in client.expect_messages(1)] == [b"echo"]
