"""Persistent sessions: v3.1.1 clean session 0, v5 clean start 0 with a session expiry.

Subscriptions, messages queued while offline, in-flight messages (PUBLISH and
PUBREL) and inbound QoS 2 state survive a reconnect and a SIGTERM/SIGINT
restart of the broker; the queue of an offline session is bounded.
"""

from __future__ import annotations

import signal
import time

import pytest

from . import mqttraw as r

EXPIRY = {r.SESSION_EXPIRY_INTERVAL: 3600}


def _connect(target, client_id, version, clean=False):
    """A raw persistent-session connection (v5: with a session expiry)."""
    client = r.RawClient(target.host, target.port, version)
    props = EXPIRY if version == 5 else None
    connack = client.connect(client_id, clean=clean, properties=props)
    assert connack.reason_code == 0
    return client, connack


def _publish(target, topic, payloads, qos_of=lambda i: 1 + i % 2, retain=False):
    pub = r.RawClient(target.host, target.port, 5)
    pub.connect("")
    for i, payload in enumerate(payloads):
        pub.publish(topic, payload, qos_of(i), retain=retain)
    pub.disconnect()


def _receive_all(client, count):
    """``count`` PUBLISH packets, each acknowledged after it arrives."""
    got = []
    for _ in range(count):
        pkt = client.expect(r.PUBLISH)
        client.ack(pkt)
        got.append(pkt)
    return got


def test_offline_messages_delivered_on_reconnect_in_order(target, uid, version):
    client, connack = _connect(target, uid, version)
    assert not connack.session_present  # a new client id: no session yet
    client.subscribe([(f"{uid}/q", 2)])
    client.disconnect()
    payloads = [f"m{i}".encode() for i in range(12)]
    _publish(target, f"{uid}/q", payloads)
    client, connack = _connect(target, uid, version)
    assert connack.session_present
    got = _receive_all(client, 12)
    assert [p.payload for p in got] == payloads
    assert [p.qos for p in got] == [1 + i % 2 for i in range(12)]
    assert client.collect(0.3) == []


def test_subscriptions_survive_reconnect(target, uid, version):
    client, _ = _connect(target, uid, version)
    client.subscribe([(f"{uid}/+", 1)])
    client.disconnect()
    client, connack = _connect(target, uid, version)
    assert connack.session_present
    _publish(target, f"{uid}/live", [b"no resubscribe needed"])
    assert client.expect(r.PUBLISH).payload == b"no resubscribe needed"


def test_qos0_not_queued_for_offline_session(target, uid, version):
    client, _ = _connect(target, uid, version)
    client.subscribe([(f"{uid}/q", 2)])
    client.disconnect()
    _publish(target, f"{uid}/q", [b"qos0", b"qos1"], qos_of=lambda i: i)
    client, _ = _connect(target, uid, version)
    assert [p.payload for p in _receive_all(client, 1)] == [b"qos1"]
    assert client.collect(0.3) == []


def test_clean_session_discards_stored_session(target, uid, version):
    client, _ = _connect(target, uid, version)
    client.subscribe([(f"{uid}/q", 1)])
    client.disconnect()
    _publish(target, f"{uid}/q", [b"lost"])
    client, connack = _connect(target, uid, version, clean=True)
    assert not connack.session_present
    assert client.collect(0.3) == []
    client.disconnect()
    client, connack = _connect(target, uid, version)
    # v3.1.1: the clean session ended at DISCONNECT; v5: clean start with an expiry began a new, empty one.
    assert connack.session_present == (version == 5)
    _publish(target, f"{uid}/q", [b"no subscription any more"])
    assert client.collect(0.3) == []


def test_paho_v311_persistent_session(paho, uid):
    client = paho(uid, 4, clean=False)
    client.connect()
    client.subscribe(f"{uid}/q", 2)
    client.disconnect()
    pub = paho(f"{uid}-pub", 4)
    pub.connect()
    for i in range(5):  # one QoS: paho hands QoS 2 over only at PUBREL, which reorders mixed QoS
        pub.publish(f"{uid}/q", f"m{i}".encode(), 2)
    again = paho(uid, 4, clean=False)
    result = again.connect()
    assert result.session_present
    assert [m.payload for m in again.expect_messages(5)] == [f"m{i}".encode() for i in range(5)]


def test_takeover_keeps_persistent_session(target, uid, version):
    first, _ = _connect(target, uid, version)
    first.subscribe([(f"{uid}/q", 1)])
    second, connack = _connect(target, uid, version)
    assert connack.session_present
    first.wait_closed()
    _publish(target, f"{uid}/q", [b"to the new connection"])
    assert second.expect(r.PUBLISH).payload == b"to the new connection"


def test_unacknowledged_publish_redelivered_with_dup(target, uid, version):
    client, _ = _connect(target, uid, version)
    client.subscribe([(f"{uid}/q", 2)])
    _publish(target, f"{uid}/q", [b"q1", b"q2"])
    first = [client.expect(r.PUBLISH), client.expect(r.PUBLISH)]
    assert not any(p.dup for p in first)
    client.close()  # no PUBACK, no PUBREC
    client, connack = _connect(target, uid, version)
    assert connack.session_present
    again = [client.expect(r.PUBLISH), client.expect(r.PUBLISH)]
    assert [(p.payload, p.qos, p.packet_id, p.dup) for p in again] == [
        (p.payload, p.qos, p.packet_id, True) for p in first
    ]
    for pkt in again:
        client.ack(pkt)
    assert client.collect(0.3) == []


def test_unacknowledged_pubrel_resent_after_reconnect(target, uid, version):
    client, _ = _connect(target, uid, version)
    client.subscribe([(f"{uid}/q", 2)])
    _publish(target, f"{uid}/q", [b"half done"], qos_of=lambda i: 2)
    pkt = client.expect(r.PUBLISH)
    client.send(r.ack_packet(r.PUBREC, pkt.packet_id, version))
    assert client.expect(r.PUBREL).packet_id == pkt.packet_id
    client.close()  # no PUBCOMP
    client, _ = _connect(target, uid, version)
    rel = client.expect(r.PUBREL)  # the PUBLISH is not sent again
    assert rel.packet_id == pkt.packet_id
    client.send(r.ack_packet(r.PUBCOMP, rel.packet_id, version))
    assert client.collect(0.3) == []


def test_inbound_qos2_state_survives_reconnect(target, paho, uid, version):
    watcher = paho(f"{uid}-watch", version)
    watcher.connect()
    watcher.subscribe(f"{uid}/once", 2)
    pub, _ = _connect(target, f"{uid}-pub", version)
    pub.send(r.publish_packet(f"{uid}/once", b"exactly once", 2, 11, version=version))
    assert pub.expect(r.PUBREC).packet_id == 11
    pub.close()  # before PUBREL
    pub, connack = _connect(target, f"{uid}-pub", version)
    assert connack.session_present
    pub.send(r.publish_packet(f"{uid}/once", b"exactly once", 2, 11, dup=True, version=version))
    assert pub.expect(r.PUBREC).packet_id == 11
    pub.send(r.ack_packet(r.PUBREL, 11, version))
    assert pub.expect(r.PUBCOMP).packet_id == 11
    assert [m.payload for m in watcher.expect_messages(1)] == [b"exactly once"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_offline_messages_survive_broker_restart(target_factory, uid, version, sig):
    target = target_factory()
    client, _ = _connect(target, uid, version)
    client.subscribe([(f"{uid}/q", 2), (f"{uid}/other/#", 1)])
    client.disconnect()
    payloads = [f"m{i}".encode() for i in range(8)]
    _publish(target, f"{uid}/q", payloads)
    _publish(target, f"{uid}/retained", [b"kept across restarts"], retain=True)
    target.restart(sig)
    client, connack = _connect(target, uid, version)
    assert connack.session_present
    got = _receive_all(client, 8)
    assert [p.payload for p in got] == payloads
    assert [p.qos for p in got] == [1 + i % 2 for i in range(8)]
    # The subscriptions came back too, and so did the retained message.
    _publish(target, f"{uid}/other/x", [b"after restart"])
    assert _receive_all(client, 1)[0].payload == b"after restart"
    client.subscribe([(f"{uid}/retained", 1)])
    pkt = client.expect(r.PUBLISH)
    assert (pkt.payload, pkt.retain) == (b"kept across restarts", True)


def test_inflight_messages_survive_broker_restart(target_factory, uid, version):
    target = target_factory()
    client, _ = _connect(target, uid, version)
    client.subscribe([(f"{uid}/q", 2)])
    _publish(target, f"{uid}/q", [b"unacked q1", b"pubrec'd q2"])
    q1, q2 = client.expect(r.PUBLISH), client.expect(r.PUBLISH)
    client.send(r.ack_packet(r.PUBREC, q2.packet_id, version))
    assert client.expect(r.PUBREL).packet_id == q2.packet_id
    client.close()
    target.restart()
    client, connack = _connect(target, uid, version)
    assert connack.session_present
    packets = [client.recv(), client.recv()]
    resent = {p.type: p for p in packets if p is not None}
    assert set(resent) == {r.PUBLISH, r.PUBREL}, packets
    assert (resent[r.PUBLISH].payload, resent[r.PUBLISH].packet_id, resent[r.PUBLISH].dup) == (
        b"unacked q1", q1.packet_id, True)
    assert resent[r.PUBREL].packet_id == q2.packet_id
    client.send(r.ack_packet(r.PUBACK, q1.packet_id, version))
    client.send(r.ack_packet(r.PUBCOMP, q2.packet_id, version))
    assert client.collect(0.3) == []


def test_inbound_qos2_state_survives_broker_restart(target_factory, uid, version):
    target = target_factory()
    watcher, _ = _connect(target, f"{uid}-watch", version)
    watcher.subscribe([(f"{uid}/once", 2)])
    watcher.disconnect()
    pub, _ = _connect(target, f"{uid}-pub", version)
    pub.send(r.publish_packet(f"{uid}/once", b"exactly once", 2, 21, version=version))
    assert pub.expect(r.PUBREC).packet_id == 21
    pub.close()
    target.restart()
    pub, _ = _connect(target, f"{uid}-pub", version)
    pub.send(r.publish_packet(f"{uid}/once", b"exactly once", 2, 21, dup=True, version=version))
    assert pub.expect(r.PUBREC).packet_id == 21
    pub.send(r.ack_packet(r.PUBREL, 21, version))
    assert pub.expect(r.PUBCOMP).packet_id == 21
    watcher, _ = _connect(target, f"{uid}-watch", version)
    assert [p.payload for p in _receive_all(watcher, 1)] == [b"exactly once"]
    assert watcher.collect(0.3) == []


def test_offline_queue_bounded_by_max_queued_messages(target_factory, uid, version):
    target = target_factory(max_queued_messages=5)
    client, _ = _connect(target, uid, version)
    client.subscribe([(f"{uid}/q", 1)])
    client.disconnect()
    _publish(target, f"{uid}/q", [str(i).encode() for i in range(10)], qos_of=lambda i: 1)
    client, connack = _connect(target, uid, version)
    assert connack.session_present
    got = _receive_all(client, 5)
    assert [p.payload for p in got] == [b"0", b"1", b"2", b"3", b"4"]  # new ones dropped when full
    assert client.collect(0.3) == []


def test_online_queue_beyond_inflight_window_bounded(target_factory, uid):
    # Ours holds the publisher back until the subscriber has acknowledged nothing for 1 s.
    target = target_factory(max_queued_messages=5, stalled_subscriber_timeout=1)
    client = r.RawClient(target.host, target.port, 5)
    client.connect(uid, properties={r.RECEIVE_MAXIMUM: 2})
    client.subscribe([(f"{uid}/q", 1)])
    _publish(target, f"{uid}/q", [str(i).encode() for i in range(12)], qos_of=lambda i: 1)
    got = []
    while True:
        window = client.collect(0.3)
        if not window:
            break
        for pkt in window:
            client.ack(pkt)
        got += window
    # 2 in flight + 5 queued; the rest was dropped.
    assert [int(p.payload) for p in got] == list(range(7))
    client.close()


@pytest.mark.ours_only("mosquitto 2.0.11 does not keep a pending delayed will across its restart")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "kill-9"])
def test_delayed_will_survives_broker_restart(target_factory, uid, sig):
    """A v5 will whose delay is still running when the broker stops is published after the restart."""
    target = target_factory()
    watcher, _ = _connect(target, f"{uid}-watch", 5)
    watcher.subscribe([(f"{uid}/will", 1)])
    dying = r.RawClient(target.host, target.port, 5)
    will = {"topic": f"{uid}/will", "payload": b"gone for good", "properties": {r.WILL_DELAY_INTERVAL: 3}}
    assert dying.connect(f"{uid}-dying", properties=EXPIRY, will=will).reason_code == 0
    dying.close()  # abnormal: the will is now pending for 3 s
    target.process.wait_for_log(f"Client {uid}-dying disconnected")  # the will is pending...
    syncer, _ = _connect(target, f"{uid}-sync", 5, clean=True)
    # ...and on disk once this is acknowledged: a retained message is stored, and its
    # PUBACK waits for a commit of every write made before it.
    syncer.publish(f"{uid}/sync", b"s", 1, retain=True)
    syncer.close()
    if sig == signal.SIGKILL:
        target.kill()
        target.start()
    else:
        target.restart(sig)
    stopped_at = time.monotonic()
    watcher, connack = _connect(target, f"{uid}-watch", 5)
    assert connack.session_present
    [pkt] = _receive_all(watcher, 1)
    assert pkt.payload == b"gone for good"
    # Due about 3 s after the disconnect, not at once on start-up and not forgotten.
    assert time.monotonic() - stopped_at > 1.0
