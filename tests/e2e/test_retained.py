"""Retained messages: set, replace, clear with an empty payload, delivered on subscribe."""

from __future__ import annotations

from . import mqttraw as r


def test_retained_message_delivered_on_subscribe_with_retain_flag(paho, uid, version):
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/r", b"stored", 1, retain=True)
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/r", 1)
    [msg] = sub.expect_messages(1)
    assert (msg.topic, msg.payload, msg.retain, msg.qos) == (f"{uid}/r", b"stored", True, 1)


def test_retained_message_replaced(paho, uid, version):
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/r", b"one", 1, retain=True)
    pub.publish(f"{uid}/r", b"two", 1, retain=True)
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/r", 1)
    assert [m.payload for m in sub.expect_messages(1)] == [b"two"]


def test_retained_message_cleared_by_empty_payload(paho, uid, version):
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/r", b"one", 1, retain=True)
    live = paho(f"{uid}-live", version)
    live.connect()
    live.subscribe(f"{uid}/r", 1)
    live.wait_messages(1)
    pub.publish(f"{uid}/r", b"", 1, retain=True)
    # The clearing message itself still reaches current subscribers (MQTT-3.3.1-10/11 context).
    assert [m.payload for m in live.wait_messages(2)] == [b"one", b""]
    later = paho(f"{uid}-later", version)
    later.connect()
    later.subscribe(f"{uid}/r", 1)
    later.expect_nothing()


def test_live_message_to_existing_subscriber_has_retain_clear(paho, uid, version):
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/r", 1)
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/r", b"live", 1, retain=True)
    [msg] = sub.expect_messages(1)
    assert msg.payload == b"live" and msg.retain is False  # MQTT-3.3.1-9 / v5 without retain-as-published


def test_wildcard_subscription_gets_every_matching_retained_message(paho, uid, version):
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    for topic in ("r/1", "r/2", "r/deep/3", "other"):
        pub.publish(f"{uid}/{topic}", topic.encode(), 1, retain=True)
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/r/#", 1)
    got = sorted(m.payload for m in sub.expect_messages(3))
    assert got == [b"r/1", b"r/2", b"r/deep/3"]
    assert all(m.retain for m in sub.messages)


def test_retained_message_delivered_at_min_qos(paho, uid, version):
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/q2", b"two", 2, retain=True)
    pub.publish(f"{uid}/q0", b"zero", 0, retain=True)
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/q2", 1)
    sub.subscribe(f"{uid}/q0", 2)
    got = {m.payload: m.qos for m in sub.expect_messages(2)}
    assert got == {b"two": 1, b"zero": 0}


def test_retained_messages_sent_on_every_subscribe(paho, uid, version):
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/r", b"again", 1, retain=True)
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/r", 1)
    sub.wait_messages(1)
    sub.subscribe(f"{uid}/r", 1)  # MQTT-3.3.1-6: a repeated subscription re-sends retained
    assert [m.payload for m in sub.expect_messages(2)] == [b"again", b"again"]


def test_empty_retained_publish_without_stored_message_stores_nothing(raw, uid, version):
    pub = raw(version)
    pub.connect(f"{uid}-pub")
    pub.publish(f"{uid}/none", b"", 1, retain=True)
    sub = raw(version)
    sub.connect(f"{uid}-sub")
    sub.subscribe([(f"{uid}/none", 1)])
    assert sub.collect(0.3) == []


def test_retained_message_on_exact_raw_subscription_has_retain_bit(raw, uid, version):
    pub = raw(version)
    pub.connect(f"{uid}-pub")
    pub.publish(f"{uid}/bits", b"r", 1, retain=True)  # QoS 1: stored before we subscribe
    sub = raw(version)
    sub.connect(f"{uid}-sub")
    sub.subscribe([(f"{uid}/bits", 0)])
    pkt = sub.expect(r.PUBLISH)
    assert pkt.retain and pkt.qos == 0 and pkt.payload == b"r"
