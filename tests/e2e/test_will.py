"""Wills: abnormal disconnect, not after DISCONNECT, retained wills, v5 delay and properties.

(The keepalive-timeout will is in test_keepalive.py.)
"""

from __future__ import annotations

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from . import mqttraw as r
from .pahoclient import props


def _watch(paho, uid, version, topic="will"):
    watcher = paho(f"{uid}-watch", version)
    watcher.connect()
    watcher.subscribe(f"{uid}/{topic}", 2)
    return watcher


def test_will_published_on_abnormal_disconnect(paho, uid, version):
    watcher = _watch(paho, uid, version)
    dying = paho(f"{uid}-dying", version)
    dying.connect(will=(f"{uid}/will", b"connection lost", 1, False))
    dying.drop()
    [will] = watcher.expect_messages(1)
    assert (will.topic, will.payload, will.qos, will.retain) == (f"{uid}/will", b"connection lost", 1, False)


def test_no_will_after_disconnect(paho, uid, version):
    watcher = _watch(paho, uid, version)
    leaving = paho(f"{uid}-leaving", version)
    leaving.connect(will=(f"{uid}/will", b"must not appear", 1, False))
    leaving.disconnect()
    watcher.expect_nothing(0.5)


def test_retained_will(paho, uid, version):
    watcher = _watch(paho, uid, version)
    dying = paho(f"{uid}-dying", version)
    dying.connect(will=(f"{uid}/will", b"last words", 1, True))
    dying.drop()
    [live] = watcher.expect_messages(1)  # published to the current subscriber ...
    assert live.payload == b"last words"
    later = paho(f"{uid}-later", version)  # ... and stored as a retained message
    later.connect()
    later.subscribe(f"{uid}/will", 1)
    [will] = later.expect_messages(1)
    assert (will.payload, will.retain) == (b"last words", True)


@pytest.mark.parametrize(
    "violation",
    [
        pytest.param(b"\x36\x05\x00\x01a\x00\x01", id="publish-qos-3"),
        pytest.param(b"\x30\xff\xff\xff\xff\x01", id="bad-remaining-length"),
        pytest.param(
            "second-connect", id="second-connect",
            marks=pytest.mark.ours_only("mosquitto 2.0.11 drops the will when a client sends a second CONNECT"),
        ),
    ],
)
def test_will_published_when_server_closes_for_protocol_error(raw, paho, uid, version, violation):
    watcher = _watch(paho, uid, version)
    bad = raw(version)
    bad.connect(f"{uid}-bad", will={"topic": f"{uid}/will", "payload": b"after a protocol error"})
    if violation == "second-connect":
        violation = r.connect_packet(f"{uid}-bad", version)
    bad.send(violation)
    bad.wait_closed()
    assert [m.payload for m in watcher.expect_messages(1)] == [b"after a protocol error"]


def test_will_qos_2_delivered_at_qos_2(raw, paho, uid, version):
    watcher = _watch(paho, uid, version)
    dying = raw(version)
    dying.connect(f"{uid}-dying", will={"topic": f"{uid}/will", "payload": b"q2", "qos": 2})
    dying.close()
    [will] = watcher.expect_messages(1)
    assert will.qos == 2


def test_v5_disconnect_with_will_message_publishes_will(paho, uid):
    watcher = _watch(paho, uid, 5)
    leaving = paho(f"{uid}-leaving", 5)
    leaving.connect(will=(f"{uid}/will", b"asked for it", 0, False))
    leaving.disconnect(reason_code=0x04)  # Disconnect with Will Message
    assert [m.payload for m in watcher.expect_messages(1)] == [b"asked for it"]


def test_v5_will_delay_interval(raw, paho, uid):
    watcher = _watch(paho, uid, 5)
    dying = raw(5)
    dying.connect(
        f"{uid}-dying",
        properties={r.SESSION_EXPIRY_INTERVAL: 60},
        will={"topic": f"{uid}/will", "payload": b"delayed", "properties": {r.WILL_DELAY_INTERVAL: 1}},
    )
    closed_at = time.monotonic()
    dying.close()
    [will] = watcher.wait_messages(1, timeout=4)
    delay = time.monotonic() - closed_at
    assert will.payload == b"delayed"
    assert delay >= 0.9, f"will published after {delay:.2f}s, before its 1 s delay"


def test_v5_will_delay_cancelled_by_reconnect(raw, paho, uid):
    watcher = _watch(paho, uid, 5)
    will = {"topic": f"{uid}/will", "payload": b"must not appear", "properties": {r.WILL_DELAY_INTERVAL: 1}}
    dying = raw(5)
    dying.connect(f"{uid}-dying", properties={r.SESSION_EXPIRY_INTERVAL: 60}, will=will)
    dying.close()
    back = raw(5)
    assert back.connect(f"{uid}-dying", clean=False, properties={r.SESSION_EXPIRY_INTERVAL: 60}).session_present
    watcher.expect_nothing(1.6)


def test_v5_will_published_when_session_ends_before_will_delay(raw, paho, uid):
    watcher = _watch(paho, uid, 5)
    dying = raw(5)
    dying.connect(
        f"{uid}-dying",
        properties={r.SESSION_EXPIRY_INTERVAL: 1},
        will={"topic": f"{uid}/will", "payload": b"session over", "properties": {r.WILL_DELAY_INTERVAL: 30}},
    )
    closed_at = time.monotonic()
    dying.close()
    [will] = watcher.wait_messages(1, timeout=4)
    assert will.payload == b"session over"
    assert time.monotonic() - closed_at < 3.5  # at the 1 s session end, not at the 30 s delay


def test_v5_will_properties_forwarded(paho, uid):
    watcher = _watch(paho, uid, 5)
    will_props = props(
        PacketTypes.WILLMESSAGE,
        ContentType="application/json",
        ResponseTopic=f"{uid}/reply",
        CorrelationData=b"\x00\x01corr",
        PayloadFormatIndicator=1,
        MessageExpiryInterval=3600,
        UserProperty=[("device", "sensor-1"), ("device", "dup-key"), ("zone", "north")],
    )
    dying = paho(f"{uid}-dying", 5)
    dying.connect(will=(f"{uid}/will", b'{"state":"offline"}', 1, False, will_props))
    dying.drop()
    [will] = watcher.expect_messages(1)
    p = will.properties
    assert p.ContentType == "application/json"
    assert p.ResponseTopic == f"{uid}/reply"
    assert p.CorrelationData == b"\x00\x01corr"
    assert p.PayloadFormatIndicator == 1
    assert 3590 <= p.MessageExpiryInterval <= 3600
    assert p.UserProperty == [("device", "sensor-1"), ("device", "dup-key"), ("zone", "north")]
