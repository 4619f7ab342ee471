"""CONNECT / CONNACK: client identifier rules, validation, keepalive 0, session takeover."""

from __future__ import annotations

import pytest

from . import mqttraw as r
from .pahoclient import PahoClient


def _refused_or_closed(client: r.RawClient) -> None:
    """The server must close the connection; if it answers first, not with success."""
    for pkt in client.wait_closed():
        assert pkt.type == r.CONNACK and pkt.reason_code != 0, f"unexpected {pkt!r}"


def test_client_identifier_accepted(raw, uid, version):
    client = raw(version)
    connack = client.connect(uid[:23])
    assert connack.reason_code == 0
    assert not connack.session_present
    assert client.is_open()


def test_v311_zero_length_client_id_with_clean_session_accepted(raw, uid):
    client = raw(4)
    connack = client.connect("", clean=True)
    assert connack.reason_code == 0
    assert client.subscribe([(f"{uid}/t", 1)]).reason_codes == [1]
    client.publish(f"{uid}/t", b"to myself", 1)
    pkt = client.expect(r.PUBLISH)
    assert pkt.payload == b"to myself"


def test_v311_zero_length_client_id_without_clean_session_rejected(raw):
    client = raw(4)
    connack = client.connect("", clean=False)
    assert connack.reason_code == 0x02  # identifier rejected
    assert not connack.session_present
    client.wait_closed()


def test_v5_zero_length_client_id_gets_assigned_identifier(paho):
    first, second = paho("", 5), paho("", 5)
    ids = []
    for client in (first, second):
        result = client.connect()
        assigned = getattr(result.properties, "AssignedClientIdentifier", None)
        assert assigned, f"no Assigned Client Identifier in {result.properties}"
        ids.append(assigned)
    assert ids[0] != ids[1]


def test_v5_connack_advertises_receive_maximum(raw, uid):
    client = raw(5)
    connack = client.connect(uid)
    assert connack.reason_code == 0
    assert connack.properties.get(r.RECEIVE_MAXIMUM) == 20  # our default max_inflight_messages


def test_keepalive_zero_accepted(raw, uid, version):
    client = raw(version)
    assert client.connect(uid, keepalive=0).reason_code == 0
    assert client.collect(1.2) == []  # no keepalive to enforce: no disconnect
    assert client.is_open()


def test_username_and_password_accepted_by_anonymous_broker(raw, uid, version):
    client = raw(version)
    assert client.connect(uid, username="device", password=b"secret").reason_code == 0
    assert client.is_open()


def test_session_takeover_closes_first_connection(paho, uid, version):
    first = paho(uid, version)
    first.connect()
    second = paho(uid, version)
    second.connect()
    first.wait_disconnected()
    # The new connection owns the client id and works.
    assert second.subscribe(f"{uid}/t", 1) == [1]
    second.publish(f"{uid}/t", b"still here", 1)
    assert second.wait_messages(1)[0].payload == b"still here"
    assert second.client.is_connected()


TAKEOVER_DIFFERS = "mosquitto 2.0.11 closes the old connection without DISCONNECT 0x8E"


@pytest.mark.ours_only(TAKEOVER_DIFFERS)
def test_v5_takeover_paho_sees_session_taken_over(paho, uid):
    first = paho(uid, 5)
    first.connect()
    paho(uid, 5).connect()
    reason, _ = first.wait_disconnected()
    assert reason == 0x8E


@pytest.mark.ours_only(TAKEOVER_DIFFERS)
def test_v5_takeover_sends_disconnect_0x8e_on_the_wire(raw, uid):
    first = raw(5)
    first.connect(uid)
    second = raw(5)
    assert second.connect(uid).reason_code == 0
    packets = first.wait_closed()
    assert [(p.type, p.reason_code) for p in packets] == [(r.DISCONNECT, 0x8E)]


@pytest.mark.parametrize("level", [2, 6, 7])
def test_unsupported_protocol_level_refused(raw, uid, level):
    client = raw(4)
    client.send(r.connect_packet(uid, version=level))
    packets = client.wait_closed()
    # v3.1.1 MQTT-3.1.2-2: CONNACK 0x01; v5 allows 0x84 (Unsupported Protocol Version).
    assert [p.type for p in packets] == [r.CONNACK]
    assert packets[0].reason_code in (0x01, 0x84)


def test_wrong_protocol_name_closes_connection(raw, uid, version):
    client = raw(version)
    data = bytearray(r.connect_packet(uid, version=version))
    data[4:8] = b"MQTX"
    client.send(bytes(data))
    _refused_or_closed(client)


def test_connect_reserved_flag_closes_connection(raw, uid, version):
    client = raw(version)
    data = bytearray(r.connect_packet(uid, version=version))
    data[9] |= 0x01  # the reserved connect flag (MQTT-3.1.2-3)
    client.send(bytes(data))
    _refused_or_closed(client)


def test_will_retain_without_will_flag_closes_connection(raw, uid, version):
    client = raw(version)
    data = bytearray(r.connect_packet(uid, version=version))
    data[9] |= 0x20  # will retain, no will flag (MQTT-3.1.2-15)
    client.send(bytes(data))
    _refused_or_closed(client)


def test_will_qos_3_closes_connection(raw, uid, version):
    client = raw(version)
    data = bytearray(r.connect_packet(uid, version=version, will={"topic": f"{uid}/w", "payload": b""}))
    data[9] |= 0x18  # will QoS 3 (MQTT-3.1.2-14)
    client.send(bytes(data))
    _refused_or_closed(client)


def test_will_topic_with_wildcard_closes_connection(raw, uid, version):
    client = raw(version)
    client.send(r.connect_packet(uid, version=version, will={"topic": f"{uid}/#", "payload": b"x"}))
    _refused_or_closed(client)


def test_v311_password_without_username_closes_connection(raw, uid):
    client = raw(4)
    client.send(r.connect_packet(uid, version=4, password=b"secret"))  # MQTT-3.1.2-22
    _refused_or_closed(client)


def test_v5_password_without_username_accepted(raw, uid):
    client = raw(5)
    assert client.connect(uid, password=b"token").reason_code == 0


def test_first_packet_must_be_connect(raw, version):
    client = raw(version)
    client.send(r.PINGREQ_PACKET)
    assert client.wait_closed() == []


def test_paho_v311_and_v5_clients_talk_to_each_other(paho, uid):
    v3: PahoClient = paho(f"{uid}-3", 4)
    v5: PahoClient = paho(f"{uid}-5", 5)
    v3.connect()
    v5.connect()
    v3.subscribe(f"{uid}/to3", 2)
    v5.subscribe(f"{uid}/to5", 2)
    v5.publish(f"{uid}/to3", b"from v5", 2)
    v3.publish(f"{uid}/to5", b"from v3", 2)
    assert [m.payload for m in v3.expect_messages(1)] == [b"from v5"]
    assert [m.payload for m in v5.expect_messages(1)] == [b"from v3"]
