"""MQTT 5 reason codes and reason strings on acknowledgements, and AUTH."""

from __future__ import annotations

import pytest

from . import mqttraw as r


def test_puback_no_matching_subscribers(raw, uid):
    client = raw(5)
    client.connect(uid)
    client.send(r.publish_packet(f"{uid}/nobody", b"x", 1, 1, version=5))
    puback = client.expect(r.PUBACK)
    assert (puback.packet_id, puback.reason_code) == (1, 0x10)


def test_puback_success_with_a_subscriber(raw, uid):
    client = raw(5)
    client.connect(uid)
    client.subscribe([(f"{uid}/me", 0)])
    client.send(r.publish_packet(f"{uid}/me", b"x", 1, 2, version=5))
    puback = client.expect(r.PUBACK, skip=(r.PUBLISH,))
    assert (puback.packet_id, puback.reason_code) == (2, 0x00)


def test_pubrec_without_subscribers_is_a_success_code(raw, uid):
    client = raw(5)
    client.connect(uid)
    client.send(r.publish_packet(f"{uid}/nobody", b"x", 2, 3, version=5))
    pubrec = client.expect(r.PUBREC)
    assert pubrec.packet_id == 3 and pubrec.reason_code in (0x00, 0x10)  # 0x10 is allowed, not required
    client.send(r.ack_packet(r.PUBREL, 3, 5))
    pubcomp = client.expect(r.PUBCOMP)
    assert (pubcomp.packet_id, pubcomp.reason_code) == (3, 0x00)


def test_paho_sees_puback_reason_code(paho, uid):
    client = paho(uid, 5)
    client.connect()
    mid = client.publish(f"{uid}/nobody", b"x", 1)
    client.wait_for(lambda: mid in client.pubacks, what="PUBACK")
    assert client.pubacks[mid] == 0x10


def test_suback_reason_codes_are_granted_qos(raw, uid):
    client = raw(5)
    client.connect(uid)
    assert client.subscribe([(f"{uid}/a", 0), (f"{uid}/b", 1), (f"{uid}/c", 2)]).reason_codes == [0, 1, 2]


@pytest.mark.ours_only("mosquitto 2.0.11 disconnects for an invalid filter instead of SUBACK 0x8F")
def test_paho_sees_suback_0x8f_for_invalid_filter(paho, uid):
    client = paho(uid, 5)
    client.connect()
    # paho itself refuses misplaced wildcards; a share name without a filter gets through to the broker.
    assert client.subscribe("$share/g", 1) == [0x8F]
    assert client.client.is_connected()


def test_unsuback_reason_codes(raw, uid):
    client = raw(5)
    client.connect(uid)
    client.subscribe([(f"{uid}/a", 1)])
    client.send(r.unsubscribe_packet(9, [f"{uid}/a", f"{uid}/b", f"{uid}/a"], 5))
    unsuback = client.expect(r.UNSUBACK)
    assert unsuback.packet_id == 9
    assert unsuback.reason_codes == [0x00, 0x11, 0x11]


@pytest.mark.ours_only("mosquitto 2.0.11 sends no reason strings")
def test_failures_carry_a_reason_string(raw, uid):
    client = raw(5)
    client.connect(uid)
    suback = client.subscribe([(f"{uid}/a/#/b", 0)])
    assert suback.reason_codes == [0x8F]
    assert suback.properties.get(r.REASON_STRING), "SUBACK failure without a reason string"
    client.send(r.packet(0x36, r.utf8(f"{uid}/x") + b"\x00\x01\x00"))  # QoS 3: malformed
    [disconnect] = client.wait_closed()
    assert disconnect.reason_code == 0x81
    assert disconnect.properties.get(r.REASON_STRING), "DISCONNECT without a reason string"


@pytest.mark.ours_only("mosquitto 2.0.11 disconnects for an invalid filter instead of SUBACK 0x8F")
def test_no_reason_string_when_problem_information_not_requested(raw, uid):
    client = raw(5)
    client.connect(uid, properties={0x17: 0})  # Request Problem Information = 0 (MQTT-3.1.2-29)
    suback = client.subscribe([(f"{uid}/a/#/b", 0)])
    assert suback.reason_codes == [0x8F]
    assert r.REASON_STRING not in suback.properties
    assert r.USER_PROPERTY not in suback.properties


def test_unknown_authentication_method_refused_0x8c(raw, uid):
    client = raw(5)
    connack = client.connect(uid, properties={r.AUTHENTICATION_METHOD: "SCRAM-SHA-256"})
    assert connack.reason_code == 0x8C  # Bad authentication method
    assert not connack.session_present
    client.wait_closed()


def test_unknown_authentication_method_with_data_refused_0x8c(raw, uid):
    client = raw(5)
    connack = client.connect(
        uid, properties={r.AUTHENTICATION_METHOD: "GS2-KRB5", r.AUTHENTICATION_DATA: b"\x01\x02"}
    )
    assert connack.reason_code == 0x8C
    client.wait_closed()


def test_paho_sees_bad_authentication_method(paho, uid):
    client = paho(uid, 5)
    result = client.connect(expect_success=False, AuthenticationMethod="no-such-method")
    assert result.reason_code == 0x8C


@pytest.mark.ours_only("mosquitto 2.0.11 closes without DISCONNECT")
def test_auth_packet_without_authentication_method_is_a_protocol_error(raw, uid):
    client = raw(5)
    client.connect(uid)
    client.send(r.auth_packet(0x19, {r.AUTHENTICATION_METHOD: "anything"}))  # re-authenticate
    assert [(p.type, p.reason_code) for p in client.wait_closed()] == [(r.DISCONNECT, 0x82)]


def test_normal_client_disconnect_reason_codes_accepted(raw, uid):
    for code in (0x00, 0x04, 0x80):
        client = raw(5)
        client.connect(f"{uid}-{code}")
        client.send(r.disconnect_packet(5, code))
        assert client.wait_closed() == []
