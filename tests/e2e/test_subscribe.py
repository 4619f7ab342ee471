"""SUBSCRIBE / UNSUBSCRIBE: wildcards, filter validation, $-topics, overlapping subscriptions."""

from __future__ import annotations

import time

import pytest

from . import mqttraw as r
from .pahoclient import QUIET

# filter (below the test's prefix) -> which of TOPICS it matches
WILDCARD_CASES = {
    "a/+": {"a/b", "a/c", "a/"},
    "a/+/c": {"a/b/c", "a//c"},
    "a/#": {"a", "a/b", "a/c", "a/b/c", "a/b/d", "a//c", "a/"},
    "+/b": {"a/b", "x/b"},
    "+/+": {"a/b", "a/c", "x/b", "a/"},
    "+": {"a"},
    "#": {"a", "a/b", "a/c", "a/b/c", "a/b/d", "a//c", "a/", "x/b"},
    "a/b/c": {"a/b/c"},
    "a/b/+/#": {"a/b/c", "a/b/d"},  # "#" also matches its parent level
    "a/b/#": {"a/b", "a/b/c", "a/b/d"},
}
TOPICS = ["a", "a/b", "a/c", "a/b/c", "a/b/d", "a//c", "a/", "x/b"]


def test_wildcard_matching(paho, uid, version):
    subscribers = {}
    for i, topic_filter in enumerate(WILDCARD_CASES):
        sub = paho(f"{uid}-{i}", version)
        sub.connect()
        assert sub.subscribe(f"{uid}/{topic_filter}", 1) == [1]
        subscribers[topic_filter] = sub
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    for topic in TOPICS:
        pub.publish(f"{uid}/{topic}", topic.encode(), 1)
    for topic_filter, expected in WILDCARD_CASES.items():
        sub = subscribers[topic_filter]
        if expected:
            sub.wait_messages(len(expected))
    time.sleep(QUIET)  # room for wrong extra deliveries to show up
    for topic_filter, expected in WILDCARD_CASES.items():
        got = [m.payload.decode() for m in subscribers[topic_filter].messages]
        assert sorted(got) == sorted(expected), f"filter {topic_filter!r}"


def test_unsubscribe_stops_delivery(paho, uid, version):
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    sub.subscribe(f"{uid}/+", 1)
    sub.subscribe(f"{uid}/keep", 1)
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/x", b"before", 1)
    sub.wait_messages(1)
    codes = sub.unsubscribe(f"{uid}/+")
    if version == 5:
        assert codes == [0x00]
    pub.publish(f"{uid}/x", b"after", 1)
    pub.publish(f"{uid}/keep", b"kept", 1)
    assert [m.payload for m in sub.expect_messages(2)] == [b"before", b"kept"]


def test_v5_unsuback_reason_codes(paho, uid):
    sub = paho(uid, 5)
    sub.connect()
    sub.subscribe(f"{uid}/a", 0)
    assert sub.unsubscribe([f"{uid}/a", f"{uid}/never"]) == [0x00, 0x11]  # 0x11: no subscription existed


def test_v311_unsuback_for_unknown_filter(raw, uid):
    client = raw(4)
    client.connect(uid)
    client.send(r.unsubscribe_packet(5, [f"{uid}/never"], 4))
    unsuback = client.expect(r.UNSUBACK)
    assert unsuback.packet_id == 5 and unsuback.raw == b"\xb0\x02\x00\x05"


def test_suback_grants_requested_qos_in_order(raw, uid, version):
    client = raw(version)
    client.connect(uid)
    suback = client.subscribe([(f"{uid}/2", 2), (f"{uid}/0", 0), (f"{uid}/1", 1)])
    assert suback.reason_codes == [2, 0, 1]


INVALID_FILTERS = ["a/#/b", "a/b#", "a+/b", "a/+b", "#/a"]


@pytest.mark.ours_only("mosquitto 2.0 disconnects the client for an invalid filter instead of a SUBACK failure")
def test_invalid_filters_get_failure_codes(raw, uid, version):
    client = raw(version)
    client.connect(uid)
    filters = [(f"{uid}/ok", 1)] + [(f"{uid}/{f}", 1) for f in INVALID_FILTERS]
    suback = client.subscribe(filters)
    failure = 0x8F if version == 5 else 0x80  # v5: Topic Filter invalid
    assert suback.reason_codes == [1] + [failure] * len(INVALID_FILTERS)
    # The valid subscription in the same packet works and the connection stays open.
    client.publish(f"{uid}/ok", b"fine", 1)
    assert client.expect(r.PUBLISH).payload == b"fine"


def test_dollar_topics_not_matched_by_leading_wildcards(raw, uid, version):
    wide = raw(version)
    wide.connect(f"{uid}-wide")
    assert wide.subscribe([("#", 0), ("+/x", 0), ("+/+", 0)]).reason_codes == [0, 0, 0]
    explicit = raw(version)
    explicit.connect(f"{uid}-explicit")
    explicit.subscribe([(f"$e2e-{uid}/#", 0)])
    pub = raw(version)
    pub.connect(f"{uid}-pub")
    pub.publish(f"$e2e-{uid}/x", b"dollar", 1)
    pub.publish(f"{uid}/x", b"plain", 1)
    got = explicit.expect(r.PUBLISH)
    assert (got.topic, got.payload) == (f"$e2e-{uid}/x", b"dollar")
    # The wide subscriber gets the plain message (and possibly retained messages of
    # other tests) but nothing whose topic starts with "$".
    received = wide.collect(0.5)
    assert any(p.payload == b"plain" for p in received)
    assert not [p for p in received if p.type == r.PUBLISH and p.topic.startswith("$")]


@pytest.mark.ours_only(
    "mosquitto 2.0.11 sends one copy but at the QoS of one matching subscription, not the highest (MQTT-3.3.5-1)"
)
def test_v311_overlapping_subscriptions_deliver_one_copy_at_highest_qos(raw, paho, uid):
    sub = raw(4)
    sub.connect(uid)
    sub.subscribe([(f"{uid}/a/+", 0), (f"{uid}/#", 2), (f"{uid}/a/b", 1)])
    pub = paho(f"{uid}-pub", 4)
    pub.connect()
    pub.publish(f"{uid}/a/b", b"once", 2)
    packets = sub.collect(0.5)
    assert [(p.type, p.payload, p.qos) for p in packets] == [(r.PUBLISH, b"once", 2)]


@pytest.mark.ours_only("mosquitto 2.0.11 sends v5 clients one copy per matching subscription (allowed by the spec)")
def test_v5_overlapping_subscriptions_carry_every_subscription_identifier(raw, paho, uid):
    sub = raw(5)
    sub.connect(uid)
    sub.subscribe([(f"{uid}/a/+", 0)], {r.SUBSCRIPTION_IDENTIFIER: 1})
    sub.subscribe([(f"{uid}/#", 2)], {r.SUBSCRIPTION_IDENTIFIER: 2})
    sub.subscribe([(f"{uid}/a/b", 1)])  # no identifier
    sub.subscribe([(f"{uid}/+/b", 1)], {r.SUBSCRIPTION_IDENTIFIER: 300})
    pub = paho(f"{uid}-pub", 5)
    pub.connect()
    pub.publish(f"{uid}/a/b", b"once", 2)
    packets = sub.collect(0.5)
    assert [(p.type, p.payload, p.qos) for p in packets] == [(r.PUBLISH, b"once", 2)]
    assert sorted(packets[0].properties.get(r.SUBSCRIPTION_IDENTIFIER, [])) == [1, 2, 300]


def test_resubscribe_replaces_the_subscription(paho, uid, version):
    sub = paho(uid, version)
    sub.connect()
    sub.subscribe(f"{uid}/t", 2)
    sub.subscribe(f"{uid}/t", 0)
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/t", b"x", 2)
    [msg] = sub.expect_messages(1)
    assert msg.qos == 0


def test_subscribe_many_filters_in_one_packet(raw, paho, uid, version):
    sub = raw(version)
    sub.connect(uid)
    filters = [(f"{uid}/{i}", i % 3) for i in range(30)]
    assert sub.subscribe(filters).reason_codes == [i % 3 for i in range(30)]
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/29", b"last", 2)
    pkt = sub.expect(r.PUBLISH)
    assert (pkt.topic, pkt.qos) == (f"{uid}/29", 2)
