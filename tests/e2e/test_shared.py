"""Shared subscriptions ``$share/group/filter``: each message to exactly one member."""

from __future__ import annotations

import time

import pytest

from . import mqttraw as r

COUNT = 40


def _members(paho, uid, version, n, group="g", topic_filter=None, qos=1):
    members = []
    for i in range(n):
        member = paho(f"{uid}-{group}-{i}", version)
        member.connect()
        codes = member.subscribe(f"$share/{group}/{topic_filter or uid + '/jobs/+'}", qos)
        assert codes == [qos]
        members.append(member)
    return members


def _publish_jobs(paho, uid, version, count=COUNT, qos=1):
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    for i in range(count):
        pub.publish(f"{uid}/jobs/{i % 3}", str(i).encode(), qos)
    return pub


def _wait_total(members, count, timeout=5.0):
    deadline = time.monotonic() + timeout
    while sum(len(m.messages) for m in members) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # room for duplicates to show up
    return [sorted(int(msg.payload) for msg in m.messages) for m in members]


def test_each_message_goes_to_exactly_one_member(paho, uid, version):
    members = _members(paho, uid, version, 3)
    _publish_jobs(paho, uid, version)
    per_member = _wait_total(members, COUNT)
    everything = sorted(n for got in per_member for n in got)
    assert everything == list(range(COUNT)), "every message exactly once across the group"
    assert sum(1 for got in per_member if got) >= 2, f"not spread over the members: {per_member}"
    for got in per_member:  # a member sees its share in publish order
        assert got == sorted(got)


def test_groups_are_independent_and_plain_subscribers_get_everything(paho, uid, version):
    group_a = _members(paho, uid, version, 2, group="a")
    group_b = _members(paho, uid, version, 2, group="b")
    plain = paho(f"{uid}-plain", version)
    plain.connect()
    plain.subscribe(f"{uid}/jobs/+", 1)
    _publish_jobs(paho, uid, version, count=20)
    assert sorted(n for got in _wait_total(group_a, 20) for n in got) == list(range(20))
    assert sorted(n for got in _wait_total(group_b, 20) for n in got) == list(range(20))
    assert [int(m.payload) for m in plain.expect_messages(20)] == list(range(20))


def test_remaining_member_gets_everything_after_another_leaves(paho, uid, version):
    staying, leaving = _members(paho, uid, version, 2)
    leaving.disconnect()
    _publish_jobs(paho, uid, version, count=10)
    assert [int(m.payload) for m in staying.expect_messages(10)] == list(range(10))


def test_unsubscribed_member_gets_nothing(paho, uid, version):
    staying, leaving = _members(paho, uid, version, 2)
    leaving.unsubscribe(f"$share/g/{uid}/jobs/+")
    _publish_jobs(paho, uid, version, count=10)
    assert [int(m.payload) for m in staying.expect_messages(10)] == list(range(10))
    leaving.expect_nothing(0.1)


@pytest.mark.ours_only("mosquitto 2.0.11 sends retained messages to new shared subscriptions (v5 4.8.2 says not to)")
def test_shared_subscription_gets_no_retained_messages(paho, uid, version):
    pub = paho(f"{uid}-retainer", version)
    pub.connect()
    pub.publish(f"{uid}/jobs/0", b"retained", 1, retain=True)
    [member] = _members(paho, uid, version, 1)
    member.expect_nothing()  # v5 4.8.2: retained messages are not sent for shared subscriptions


def test_shared_delivery_at_min_qos(paho, uid, version):
    [member] = _members(paho, uid, version, 1, qos=0)
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/jobs/1", b"x", 2)
    [msg] = member.expect_messages(1)
    assert msg.qos == 0


@pytest.mark.ours_only("mosquitto 2.0.11 accepts No Local on a shared subscription (MQTT-3.8.3-4)")
def test_v5_no_local_on_shared_subscription_is_a_protocol_error(raw, uid):
    client = raw(5)
    client.connect(uid)
    client.send(r.subscribe_packet(1, [(f"$share/g/{uid}/t", 0x05)], 5))  # QoS 1 + No Local
    packets = client.wait_closed()
    assert packets and packets[-1].type == r.DISCONNECT and packets[-1].reason_code == 0x82


@pytest.mark.ours_only("mosquitto 2.0.11 disconnects for an invalid share name instead of a SUBACK failure")
def test_invalid_share_names_get_failure_codes(raw, uid, version):
    client = raw(version)
    client.connect(uid)
    filters = [(f"$share/g/{uid}/ok", 1), ("$share/g", 1), ("$share//t", 1), ("$share/g+/t", 1), ("$share/g#/t", 1)]
    failure = 0x8F if version == 5 else 0x80
    assert client.subscribe(filters).reason_codes == [1] + [failure] * 4


@pytest.mark.ours_only("mosquitto 2.0.11 queues round-robin to a member even when its Receive Maximum window is full")
def test_busy_member_is_skipped_competing_consumers(raw, paho, uid):
    slow = raw(5)
    slow.connect(f"{uid}-slow", properties={r.RECEIVE_MAXIMUM: 1})
    slow.subscribe([(f"$share/g/{uid}/jobs/+", 1)])
    fast = paho(f"{uid}-fast", 5)
    fast.connect()
    fast.subscribe(f"$share/g/{uid}/jobs/+", 1)
    _publish_jobs(paho, uid, 5, count=20)
    held = slow.collect(0.5)
    assert len(held) <= 1, "the slow member's window is 1 and it never acknowledges"
    fast_got = [int(m.payload) for m in fast.wait_messages(20 - len(held))]
    assert sorted(fast_got + [int(p.payload) for p in held]) == list(range(20))
