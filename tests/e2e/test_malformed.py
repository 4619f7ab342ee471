"""Malformed and illegal packets: that one connection is closed (v5: DISCONNECT with
the right reason code), and every other connection keeps working.

Where the specifications leave the exact reason code open (the same violation
can fairly be called malformed or a protocol error), a row lists every code the
text allows.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from . import mqttraw as r

MALFORMED, PROTOCOL_ERROR = 0x81, 0x82
TOPIC_ALIAS_INVALID, TOPIC_NAME_INVALID = 0x94, 0x90


def _sub_body(version: int, packet_id: int = 1, entries: bytes = b"") -> bytes:
    return struct.pack("!H", packet_id) + (b"\x00" if version == 5 else b"") + entries


@dataclass
class Case:
    name: str
    build: Callable[[int, str], bytes]  # (version, topic prefix) -> bytes to send after CONNECT
    codes: set[int]  # acceptable v5 DISCONNECT reason codes
    v5_only: bool = False
    mosquitto_silent: str = ""  # mosquitto closes without a DISCONNECT: the code check is ours-only
    mosquitto_accepts: str = ""  # mosquitto does not even close: the whole row is ours-only


CASES = [
    Case("remaining-length-5-bytes", lambda v, t: b"\x30\xff\xff\xff\xff\x01", {MALFORMED},
         mosquitto_silent="closes without DISCONNECT"),
    Case("second-connect", lambda v, t: r.connect_packet("again", v), {PROTOCOL_ERROR},
         mosquitto_silent="closes without DISCONNECT"),
    Case("publish-qos-3", lambda v, t: r.packet(0x36, r.utf8(f"{t}/x") + b"\x00\x01" + (b"\x00" if v == 5 else b"")),
         {MALFORMED}),
    Case("pubrel-wrong-flags", lambda v, t: r.packet(0x60, b"\x00\x07"), {MALFORMED},
         mosquitto_silent="closes without DISCONNECT"),
    Case("subscribe-wrong-flags", lambda v, t: r.packet(0x80, _sub_body(v, 1, r.utf8(f"{t}/x") + b"\x00")),
         {MALFORMED}),
    Case("subscribe-without-filters", lambda v, t: r.packet(0x82, _sub_body(v)), {MALFORMED, PROTOCOL_ERROR}),
    # v3.1.1 calls it malformed, v5 a protocol error (3.8.3.1)
    Case("subscribe-qos-3", lambda v, t: r.packet(0x82, _sub_body(v, 1, r.utf8(f"{t}/x") + b"\x03")),
         {MALFORMED, PROTOCOL_ERROR}),
    Case("subscribe-reserved-option-bits", lambda v, t: r.packet(0x82, _sub_body(v, 1, r.utf8(f"{t}/x") + b"\xc1")),
         {MALFORMED}),
    Case("subscribe-retain-handling-3", lambda v, t: r.packet(0x82, _sub_body(v, 1, r.utf8(f"{t}/x") + b"\x31")),
         {MALFORMED, PROTOCOL_ERROR}, v5_only=True),
    Case("subscribe-packet-id-0", lambda v, t: r.packet(0x82, _sub_body(v, 0, r.utf8(f"{t}/x") + b"\x01")),
         {MALFORMED, PROTOCOL_ERROR}),
    Case("unsubscribe-without-filters", lambda v, t: r.packet(0xA2, _sub_body(v)), {MALFORMED, PROTOCOL_ERROR}),
    Case("publish-qos1-packet-id-0", lambda v, t: r.publish_packet(f"{t}/x", b"", 1, 0, version=v),
         {MALFORMED, PROTOCOL_ERROR}),
    Case("publish-topic-with-wildcard", lambda v, t: r.publish_packet(f"{t}/+", b"", 0, version=v),
         {PROTOCOL_ERROR, TOPIC_NAME_INVALID}),
    Case("publish-topic-invalid-utf8", lambda v, t: r.packet(0x30, b"\x00\x02\xc3\x28" + (b"\x00" if v == 5 else b"")),
         {MALFORMED}),
    Case("publish-topic-with-nul", lambda v, t: r.publish_packet(f"{t}/\x00", b"", 0, version=v), {MALFORMED}),
    Case("publish-empty-topic-no-alias", lambda v, t: r.publish_packet("", b"", 0, version=v), {PROTOCOL_ERROR}),
    Case("publish-topic-alias-0", lambda v, t: r.publish_packet(f"{t}/x", b"", 0, version=v,
                                                                properties={r.TOPIC_ALIAS: 0}),
         {MALFORMED, PROTOCOL_ERROR, TOPIC_ALIAS_INVALID}, v5_only=True),
    Case("publish-unknown-topic-alias", lambda v, t: r.publish_packet("", b"", 0, version=v,
                                                                      properties={r.TOPIC_ALIAS: 3}),
         {PROTOCOL_ERROR, TOPIC_ALIAS_INVALID}, v5_only=True),
    Case("publish-property-length-overruns", lambda v, t: r.packet(0x30, r.utf8(f"{t}/x") + b"\x09\x03\x00\x01"),
         {MALFORMED}, v5_only=True),
    Case("publish-unknown-property", lambda v, t: r.packet(0x30, r.utf8(f"{t}/x") + b"\x02\x7f\x00"),
         {MALFORMED}, v5_only=True),
    Case("publish-property-not-allowed-in-publish",
         lambda v, t: r.publish_packet(f"{t}/x", b"", 0, version=v, properties={r.SESSION_EXPIRY_INTERVAL: 5}),
         {MALFORMED, PROTOCOL_ERROR}, v5_only=True),
    Case("publish-duplicate-content-type",
         lambda v, t: r.packet(0x30, r.utf8(f"{t}/x") + b"\x08" + (b"\x03" + r.utf8("a")) * 2),
         {MALFORMED, PROTOCOL_ERROR}, v5_only=True, mosquitto_silent="closes without DISCONNECT"),
    Case("user-property-invalid-utf8",
         lambda v, t: r.packet(0x30, r.utf8(f"{t}/x") + b"\x08\x26\x00\x01\xff\x00\x01a"),
         {MALFORMED}, v5_only=True, mosquitto_silent="closes without DISCONNECT"),
    Case("reserved-packet-type-0", lambda v, t: r.packet(0x00, b""), {MALFORMED, PROTOCOL_ERROR}),
    Case("pingreq-wrong-flags", lambda v, t: b"\xc1\x00", {MALFORMED},
         mosquitto_accepts="answers a PINGREQ with reserved flags set (MQTT-2.2.2-2)"),
    Case("pingreq-with-body", lambda v, t: b"\xc0\x01\x00", {MALFORMED},
         mosquitto_accepts="answers a PINGREQ that has a body"),
    Case("server-only-packet-connack", lambda v, t: b"\x20\x02\x00\x00", {MALFORMED, PROTOCOL_ERROR},
         mosquitto_silent="closes without DISCONNECT"),
    Case("auth-without-authentication-method", lambda v, t: r.auth_packet(0x18, {r.AUTHENTICATION_METHOD: "x"}),
         {PROTOCOL_ERROR}, v5_only=True, mosquitto_silent="closes without DISCONNECT"),
]


def _params(version: int, check_code: bool) -> list:
    params = []
    for case in CASES:
        if case.v5_only and version != 5:
            continue
        marks = []
        if case.mosquitto_accepts:
            marks.append(pytest.mark.ours_only(f"mosquitto 2.0.11 {case.mosquitto_accepts}"))
        elif check_code and case.mosquitto_silent:
            marks.append(pytest.mark.ours_only(f"mosquitto 2.0.11 {case.mosquitto_silent}"))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def _bystander_still_works(raw, uid: str, bystander: r.RawClient) -> None:
    assert bystander.is_open()
    bystander.publish(f"{uid}/bystander", b"still fine", 1)
    pkt = bystander.expect(r.PUBLISH)
    assert pkt.payload == b"still fine"
    fresh = raw(bystander.version)
    assert fresh.connect(f"{uid}-fresh").reason_code == 0


@pytest.mark.parametrize("case", _params(4, False))
def test_v311_malformed_packet_closes_only_that_connection(raw, uid, case):
    bystander = raw(4)
    bystander.connect(f"{uid}-bystander")
    bystander.subscribe([(f"{uid}/bystander", 1)])
    bad = raw(4)
    bad.connect(f"{uid}-bad")
    bad.send(case.build(4, uid))
    assert bad.wait_closed() == []  # v3.1.1 has no server DISCONNECT: just the close
    _bystander_still_works(raw, uid, bystander)


@pytest.mark.parametrize("case", _params(5, False))
def test_v5_malformed_packet_closes_only_that_connection(raw, uid, case):
    bystander = raw(5)
    bystander.connect(f"{uid}-bystander")
    bystander.subscribe([(f"{uid}/bystander", 1)])
    bad = raw(5)
    bad.connect(f"{uid}-bad")
    bad.send(case.build(5, uid))
    packets = bad.wait_closed()
    assert all(p.type == r.DISCONNECT for p in packets), packets
    _bystander_still_works(raw, uid, bystander)


@pytest.mark.parametrize("case", _params(5, True))
def test_v5_malformed_packet_disconnect_reason_code(raw, uid, case):
    bad = raw(5)
    bad.connect(f"{uid}-bad")
    bad.send(case.build(5, uid))
    packets = bad.wait_closed()
    assert len(packets) == 1 and packets[0].type == r.DISCONNECT, f"expected one DISCONNECT, got {packets}"
    assert packets[0].reason_code in case.codes, (
        f"reason code {packets[0].reason_code:#x}, expected one of {sorted(hex(c) for c in case.codes)}"
    )


def test_v311_auth_packet_closes_connection(raw, uid):
    client = raw(4)
    client.connect(uid)
    client.send(r.packet(0xF0, b""))  # AUTH does not exist in v3.1.1: reserved packet type
    assert client.wait_closed() == []


def test_garbage_before_connect_closes_connection(raw):
    client = raw(4)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.wait_closed() == []


def test_connection_closed_mid_packet_does_not_disturb_others(raw, uid):
    bystander = raw(5)
    bystander.connect(f"{uid}-bystander")
    bystander.subscribe([(f"{uid}/bystander", 1)])
    half = raw(5)
    half.connect(f"{uid}-half")
    half.send(r.publish_packet(f"{uid}/bystander", b"x" * 1000, 1, 1, version=5)[:500])
    half.close()
    _bystander_still_works(raw, uid, bystander)
    assert bystander.collect(0.2) == []  # the half packet was never delivered
