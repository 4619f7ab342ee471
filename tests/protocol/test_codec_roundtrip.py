"""Encode-then-decode round trips, and the encoder's own output checked against hand-written bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.protocol import properties as P
from broker.protocol.codec import PacketReader, decode_packet, encode, encode_publish
from broker.protocol.errors import MalformedPacket
from broker.protocol.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
)
from broker.protocol.wire import encode_varint, read_varint
from codec_strategies import client_packets, connects, server_packets, versions
from codec_table import h, split_fixed_header


def roundtrip(packet, version: int, from_client: bool):
    first, body = split_fixed_header(encode(packet, version))
    return decode_packet(first, body, version if packet.packet_type != 1 else None, from_client=from_client)


CLIENT_EXAMPLES = {
    4: [
        Connect("dev-1", 4, "MQTT", False, 120, "user", b"secret", Will("dev/1/status", b"offline", 1, True)),
        Publish("sensors/t", b"21.5", 1, False, False, 3),
        Puback(3), Pubrec(4), Pubrel(4), Pubcomp(4),
        Subscribe(5, [("sensors/#", SubscriptionOptions(1)), ("cmd/+", SubscriptionOptions(2))]),
        Unsubscribe(6, ["sensors/#", "cmd/+"]),
        Pingreq(), Disconnect(),
    ],
    5: [
        Connect("dev-1", 5, "MQTT", True, 30, None, b"token",
                Will("dev/1/status", b"offline", 2, False, {P.WILL_DELAY_INTERVAL: 10}),
                {P.SESSION_EXPIRY_INTERVAL: 0xFFFFFFFF, P.RECEIVE_MAXIMUM: 100}),
        Publish("sensors/t", b"21.5", 2, True, True, 65535,
                {P.MESSAGE_EXPIRY_INTERVAL: 10, P.USER_PROPERTY: [("unit", "C"), ("unit", "K")]}),
        Publish("", b"x", 0, False, False, None, {P.TOPIC_ALIAS: 2}),
        Puback(3, 0x10), Pubrec(4, 0x80, {P.REASON_STRING: "no"}), Pubrel(4, 0x92), Pubcomp(4),
        Subscribe(5, [("a/+", SubscriptionOptions(1, True, False, 1))], {P.SUBSCRIPTION_IDENTIFIER: [7]}),
        Unsubscribe(6, ["a/+"], {P.USER_PROPERTY: [("k", "v")]}),
        Pingreq(), Disconnect(0x04), Auth(0x19, {P.AUTHENTICATION_METHOD: "otp"}),
    ],
}
SERVER_EXAMPLES = {
    4: [Connack(True, 0), Connack(False, 2), Publish("a", b"b"), Puback(1), Suback(1, [0, 0x80]),
        Unsuback(9), Pingresp(), Disconnect()],
    5: [Connack(False, 0, {P.ASSIGNED_CLIENT_IDENTIFIER: "auto-1", P.TOPIC_ALIAS_MAXIMUM: 10}),
        Publish("a", b"b", 1, False, False, 1, {P.SUBSCRIPTION_IDENTIFIER: [1, 2, 268435455]}),
        Suback(1, [0, 1, 2, 0x87]), Unsuback(9, [0, 0x11]), Pingresp(),
        Disconnect(0x8B, {P.SERVER_REFERENCE: "other:1883"}), Auth(0x18)],
}


@pytest.mark.parametrize("version", [4, 5])
def test_client_examples_roundtrip(version: int) -> None:
    for packet in CLIENT_EXAMPLES[version]:
        assert roundtrip(packet, version, from_client=True) == packet


@pytest.mark.parametrize("version", [4, 5])
def test_server_examples_roundtrip(version: int) -> None:
    for packet in SERVER_EXAMPLES[version]:
        assert roundtrip(packet, version, from_client=False) == packet


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_client_packet_roundtrips(data) -> None:
    version = data.draw(versions)
    packet = data.draw(client_packets(version) | connects(version))
    assert roundtrip(packet, version, from_client=True) == packet


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_server_packet_roundtrips(data) -> None:
    version = data.draw(versions)
    packet = data.draw(server_packets(version))
    assert roundtrip(packet, version, from_client=False) == packet


# ---------------------------------------------------------------------------- encoder output


def test_encode_publish_v311_qos0() -> None:
    assert encode_publish("a/b/c", b"hello", 0, False, False, None, None, 4) == h(
        "30 0c 00 05 61 2f 62 2f 63 68 65 6c 6c 6f")


def test_encode_publish_v311_qos2_dup_retain() -> None:
    assert encode_publish("a/b/c", b"hello", 2, True, True, 0xFFFF, None, 4) == h(
        "3d 0e 00 05 61 2f 62 2f 63 ff ff 68 65 6c 6c 6f")


def test_encode_publish_v311_drops_properties() -> None:
    assert encode_publish("t", b"", 1, False, False, 1, {P.MESSAGE_EXPIRY_INTERVAL: 5}, 4) == h(
        "32 05 00 01 74 00 01")


def test_encode_publish_v5_without_properties_writes_empty_block() -> None:
    assert encode_publish("a/b/c", b"hello", 0, False, False, None, None, 5) == h(
        "30 0d 00 05 61 2f 62 2f 63 00 68 65 6c 6c 6f")
    assert encode_publish("a/b/c", b"hello", 0, False, False, None, {}, 5) == h(
        "30 0d 00 05 61 2f 62 2f 63 00 68 65 6c 6c 6f")


def test_encode_publish_v5_with_subscription_identifiers() -> None:
    assert encode_publish("a/b/c", b"hi", 1, False, False, 2,
                          {P.SUBSCRIPTION_IDENTIFIER: [1, 128]}, 5) == h(
        "32 11 00 05 61 2f 62 2f 63 00 02 05 0b 01 0b 80 01 68 69")


def test_encode_publish_accepts_memoryview_and_bytearray_payloads() -> None:
    want = h("30 06 00 01 74 61 62 63")
    assert encode_publish("t", memoryview(b"abc"), 0, False, False, None, None, 4) == want
    assert encode_publish("t", bytearray(b"abc"), 0, False, False, None, None, 4) == want


def test_encode_publish_qos1_needs_packet_id() -> None:
    with pytest.raises(ValueError):
        encode_publish("t", b"", 1, False, False, None, None, 4)
    with pytest.raises(ValueError):
        encode_publish("t", b"", 2, False, False, 0, None, 5)


@pytest.mark.parametrize("payload_len, header", [
    (124, "30 7f"),  # remaining length 127: one byte
    (125, "30 80 01"),  # 128: two bytes
    (16380, "30 ff 7f"),  # 16383
    (16381, "30 80 80 01"),  # 16384: three bytes
    (2097149, "30 80 80 80 01"),  # 2097152: four bytes
])
def test_remaining_length_boundaries(payload_len: int, header: str) -> None:
    payload = bytes(payload_len)
    raw = encode_publish("t", payload, 0, False, False, None, None, 4)
    assert raw[: len(h(header))] == h(header)
    assert len(raw) == len(h(header)) + 3 + payload_len
    reader = PacketReader()
    reader.version = 4
    assert reader.feed(raw) == [Publish("t", payload)]


def test_v3_suback_maps_v5_refusals_to_0x80() -> None:
    assert encode(Suback(1, [0, 1, 2, 0x87, 0x8F, 0x80]), 4) == h("90 08 00 01 00 01 02 80 80 80")


def test_v3_drops_v5_only_fields() -> None:
    assert encode(Unsuback(1, [0x11], {P.REASON_STRING: "x"}), 4) == h("b0 02 00 01")
    assert encode(Puback(1, 0x80, {P.REASON_STRING: "x"}), 4) == h("40 02 00 01")
    assert encode(Disconnect(0x8E, {P.REASON_STRING: "x"}), 4) == h("e0 00")
    assert encode(Subscribe(1, [("t", SubscriptionOptions(1, True, True, 2))]), 4) == h(
        "82 06 00 01 00 01 74 01")


def test_v5_short_forms() -> None:
    assert encode(Puback(1), 5) == h("40 02 00 01")
    assert encode(Pubrel(1), 5) == h("62 02 00 01")
    assert encode(Pubcomp(1, 0x92), 5) == h("70 03 00 01 92")
    assert encode(Disconnect(), 5) == h("e0 00")
    assert encode(Disconnect(0x8E), 5) == h("e0 01 8e")
    assert encode(Auth(), 5) == h("f0 00")


def test_connack_encodings() -> None:
    assert encode(Connack(True, 0), 4) == h("20 02 01 00")
    assert encode(Connack(False, 0x85), 5) == h("20 03 00 85 00")


def test_connect_level_3_uses_the_mqisdp_name() -> None:
    assert encode(Connect("abc", 3, "MQIsdp", False, 0), 3) == h(
        "10 11 00 06 4d 51 49 73 64 70 03 00 00 00 00 03 61 62 63")


def test_auth_does_not_exist_in_v3() -> None:
    with pytest.raises(ValueError):
        encode(Auth(), 4)


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError):
        encode(Pingreq(), 6)


def test_encoder_refuses_unencodable_values() -> None:
    with pytest.raises(ValueError):
        encode_publish("x" * 65536, b"", 0, False, False, None, None, 4)
    with pytest.raises(ValueError):
        encode(Publish("t", b"", properties={0x04: 1}), 5)


# ---------------------------------------------------------------------------- variable byte integers

# The boundaries table of MQTT 5 section 1.5.5 / 3.1.1 section 2.2.3.
VARINTS = [
    (0, "00"), (127, "7f"), (128, "80 01"), (16383, "ff 7f"), (16384, "80 80 01"),
    (2097151, "ff ff 7f"), (2097152, "80 80 80 01"), (268435455, "ff ff ff 7f"),
]


@pytest.mark.parametrize("value, wire", VARINTS)
def test_varint_table(value: int, wire: str) -> None:
    raw = h(wire)
    assert encode_varint(value) == raw
    assert read_varint(raw, 0, len(raw)) == (value, len(raw))


def test_varint_limits() -> None:
    with pytest.raises(ValueError):
        encode_varint(268435456)
    with pytest.raises(ValueError):
        encode_varint(-1)
    with pytest.raises(MalformedPacket):
        read_varint(h("80 80 80 80 01"), 0, 5)
    with pytest.raises(MalformedPacket):
        read_varint(h("80 80"), 0, 2)


@given(st.integers(0, 268435455))
def test_varint_roundtrip(value: int) -> None:
    raw = encode_varint(value)
    assert read_varint(raw, 0, len(raw)) == (value, len(raw))
