"""PacketReader as a stream decoder: framing across feed() calls, errors mid-stream, limits, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.protocol import properties as P
from broker.protocol.codec import PacketReader, decode_packet, encode
from broker.protocol.errors import MalformedPacket, MQTTError, PacketTooLarge, ProtocolError
from broker.protocol.packets import Connect, Disconnect, Pingreq, Puback, Publish
from codec_strategies import client_streams, server_packets, versions
from codec_table import h

CONNECT_V4 = h("10 0f 00 04 4d 51 54 54 04 02 00 3c 00 03 7a 65 6e")
CONNECT_V5 = h("10 10 00 04 4d 51 54 54 05 02 00 3c 00 00 03 7a 65 6e")
PUBLISH_V4 = h("32 0e 00 05 61 2f 62 2f 63 00 07 68 65 6c 6c 6f")
PUBLISH_V5 = h("30 0d 00 05 61 2f 62 2f 63 03 23 00 01 68 69")  # with Topic Alias 1
PINGREQ = h("c0 00")
BAD = h("00 00")  # packet type 0

CONNECT_V4_PACKET = Connect("zen", 4, "MQTT", True, 60)
PUBLISH_V4_PACKET = Publish("a/b/c", b"hello", 1, packet_id=7)


def test_several_packets_in_one_feed() -> None:
    reader = PacketReader()
    assert reader.feed(CONNECT_V4 + PUBLISH_V4 + PINGREQ + PUBLISH_V4) == [
        CONNECT_V4_PACKET, PUBLISH_V4_PACKET, Pingreq(), PUBLISH_V4_PACKET]
    assert reader.version == 4


def test_version_switches_to_v5_inside_one_feed() -> None:
    """The PUBLISH after the CONNECT in the same chunk must already be read as v5 (property block)."""
    reader = PacketReader()
    packets = reader.feed(CONNECT_V5 + PUBLISH_V5)
    assert packets[1] == Publish("a/b/c", b"hi", properties={P.TOPIC_ALIAS: 1})
    assert reader.version == 5


def test_mqtt31_connect_sets_version_3() -> None:
    reader = PacketReader()
    reader.feed(h("10 11 00 06 4d 51 49 73 64 70 03 00 00 00 00 03 61 62 63"))
    assert reader.version == 3


def test_every_two_way_split_of_a_stream() -> None:
    stream = CONNECT_V4 + PUBLISH_V4 + PINGREQ + PUBLISH_V4
    want = [CONNECT_V4_PACKET, PUBLISH_V4_PACKET, Pingreq(), PUBLISH_V4_PACKET]
    for cut in range(len(stream) + 1):
        reader = PacketReader()
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == want, cut


def test_every_three_way_split_of_a_stream() -> None:
    stream = CONNECT_V4 + PUBLISH_V4 + PINGREQ
    want = [CONNECT_V4_PACKET, PUBLISH_V4_PACKET, Pingreq()]
    for a in range(len(stream) + 1):
        for b in range(a, len(stream) + 1):
            reader = PacketReader()
            got = reader.feed(stream[:a]) + reader.feed(stream[a:b]) + reader.feed(stream[b:])
            assert got == want, (a, b)


def test_partial_packet_returns_nothing_yet() -> None:
    reader = PacketReader()
    assert reader.feed(CONNECT_V4[:5]) == []
    assert reader.feed(b"") == []
    assert reader.feed(CONNECT_V4[5:]) == [CONNECT_V4_PACKET]


def test_accepts_bytearray_and_memoryview() -> None:
    reader = PacketReader()
    assert reader.feed(bytearray(CONNECT_V4)) == [CONNECT_V4_PACKET]
    chunk = bytearray(PUBLISH_V4)
    view = memoryview(chunk)
    assert reader.feed(view[:4]) == []
    chunk[0] = 0x00  # the reader must have copied what it kept: mutating the caller's buffer is harmless
    assert reader.feed(memoryview(PUBLISH_V4)[4:]) == [PUBLISH_V4_PACKET]


def test_payload_is_bytes_and_independent_of_the_input_buffer() -> None:
    reader = PacketReader()
    packets = reader.feed(CONNECT_V4 + PUBLISH_V4)
    assert type(packets[1].payload) is bytes
    assert type(packets[1].topic) is str


def test_large_packet_in_many_small_chunks() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    raw = encode(Publish("big", payload, 1, packet_id=1), 4)
    reader = PacketReader()
    reader.feed(CONNECT_V4)
    got = []
    for i in range(0, len(raw), 1000):
        got += reader.feed(raw[i : i + 1000])
    assert got == [Publish("big", payload, 1, packet_id=1)]


# ---------------------------------------------------------------------------- errors mid-stream


def test_packets_before_holds_what_came_before_the_bad_packet() -> None:
    reader = PacketReader()
    with pytest.raises(MalformedPacket) as info:
        reader.feed(CONNECT_V4 + PUBLISH_V4 + PINGREQ + BAD + PUBLISH_V4)
    assert info.value.packets_before == [CONNECT_V4_PACKET, PUBLISH_V4_PACKET, Pingreq()]
    assert reader.version == 4


def test_packets_before_is_empty_when_the_first_packet_is_bad() -> None:
    reader = PacketReader()
    reader.feed(CONNECT_V4)
    with pytest.raises(MalformedPacket) as info:
        reader.feed(BAD + PUBLISH_V4)
    assert info.value.packets_before == []


def test_packets_before_only_covers_the_current_feed() -> None:
    reader = PacketReader()
    assert reader.feed(CONNECT_V4 + PUBLISH_V4[:3]) == [CONNECT_V4_PACKET]
    with pytest.raises(ProtocolError) as info:
        reader.feed(PUBLISH_V4[3:] + CONNECT_V4)  # a second CONNECT
    assert info.value.packets_before == [PUBLISH_V4_PACKET]


def test_packets_before_with_a_decoding_error() -> None:
    reader = PacketReader()
    reader.feed(CONNECT_V4)
    bad_topic = h("30 05 00 03 61 2f 23")
    with pytest.raises(ProtocolError) as info:
        reader.feed(PINGREQ + bad_topic)
    assert info.value.packets_before == [Pingreq()]
    assert info.value.reason_code == 0x90


def test_reader_stays_dead_after_an_error() -> None:
    reader = PacketReader()
    with pytest.raises(ProtocolError):
        reader.feed(PINGREQ)  # before CONNECT
    for _ in range(2):
        with pytest.raises(ProtocolError) as info:
            reader.feed(CONNECT_V4)
        assert info.value.packets_before == []


def test_bad_first_byte_is_refused_before_the_rest_arrives() -> None:
    reader = PacketReader()
    reader.feed(CONNECT_V4)
    with pytest.raises(MalformedPacket):
        reader.feed(h("36"))  # PUBLISH QoS 3


def test_five_byte_remaining_length_is_refused_at_the_fifth_byte() -> None:
    reader = PacketReader()
    reader.feed(CONNECT_V4)
    for byte in h("30 80 80 80"):
        assert reader.feed(bytes((byte,))) == []
    with pytest.raises(MalformedPacket):
        reader.feed(h("80"))


def test_packet_at_the_default_limit_just_waits() -> None:
    reader = PacketReader()
    reader.feed(CONNECT_V4)
    # remaining length 268435450 + 5 header bytes = 268435455, the default maximum
    assert reader.feed(h("30 fa ff ff 7f 00 01 74")) == []
    reader = PacketReader()
    reader.feed(CONNECT_V4)
    with pytest.raises(PacketTooLarge):
        reader.feed(h("30 fb ff ff 7f"))


# ---------------------------------------------------------------------------- maximum packet size


def test_too_large_is_known_from_the_header_alone() -> None:
    reader = PacketReader(max_packet_size=1000)
    reader.feed(CONNECT_V4)
    with pytest.raises(PacketTooLarge) as info:
        reader.feed(h("30 ff ff 03"))  # remaining length 65535, no body sent
    assert info.value.reason_code == 0x95
    assert info.value.packets_before == []


def test_max_packet_size_counts_the_whole_packet() -> None:
    # PUBLISH_V4 is 2 header bytes + 14 body bytes = 16 bytes.
    reader = PacketReader(max_packet_size=17)
    reader.feed(CONNECT_V4)  # 17 bytes
    reader.max_packet_size = 16  # the engine may change it after CONNECT
    assert reader.feed(PUBLISH_V4) == [PUBLISH_V4_PACKET]
    reader.max_packet_size = 15
    with pytest.raises(PacketTooLarge) as info:
        reader.feed(PINGREQ + PUBLISH_V4)
    assert info.value.packets_before == [Pingreq()]


def test_connect_itself_is_subject_to_the_limit() -> None:
    with pytest.raises(PacketTooLarge):
        PacketReader(max_packet_size=10).feed(CONNECT_V4)


# ---------------------------------------------------------------------------- client side, decode_packet


def test_client_side_reader_needs_a_version() -> None:
    with pytest.raises(ValueError):
        PacketReader(client_side=True)


def test_client_side_reader_accepts_server_packets() -> None:
    reader = PacketReader(client_side=True, version=5)
    raw = h("20 03 00 00 00") + h("30 0a 00 01 74 02 0b 05 68 69 21 21") + h("d0 00")
    packets = reader.feed(raw)
    assert [p.packet_type for p in packets] == [2, 3, 13]
    assert packets[1].properties == {P.SUBSCRIPTION_IDENTIFIER: [5]}


def test_decode_packet_before_connect_only_takes_connect() -> None:
    with pytest.raises(ProtocolError):
        decode_packet(0xC0, b"", None)
    assert decode_packet(0x10, CONNECT_V4[2:], None) == CONNECT_V4_PACKET


def test_decode_packet_checks_fixed_header_flags() -> None:
    with pytest.raises(MalformedPacket):
        decode_packet(0x41, h("00 01"), 4)
    with pytest.raises(MalformedPacket):
        decode_packet(0xF0, b"", 4)
    assert decode_packet(0x40, h("00 01"), 4) == Puback(1)


def test_decode_packet_subscription_identifier_depends_on_direction() -> None:
    body = h("00 01 74 02 0b 05")
    with pytest.raises(ProtocolError):
        decode_packet(0x30, body, 5)
    assert decode_packet(0x30, body, 5, from_client=False) == Publish(
        "t", b"", properties={P.SUBSCRIPTION_IDENTIFIER: [5]})


# ---------------------------------------------------------------------------- hypothesis


def _encode_stream(version: int, packets: list) -> bytes:
    return b"".join(encode(p, version) for p in packets)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_streams(), st.data())
def test_random_chunking_gives_the_same_packets(stream, data) -> None:
    version, packets = stream
    raw = _encode_stream(version, packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    reader = PacketReader()
    got = []
    start = 0
    for cut in cuts + [len(raw)]:
        got += reader.feed(raw[start:cut])
        start = cut
    assert got == packets
    assert PacketReader().feed(raw) == packets
    assert reader.version == version


@settings(max_examples=100, deadline=None)
@given(versions, st.data())
def test_random_chunking_on_the_client_side(version, data) -> None:
    packets = data.draw(st.lists(server_packets(version), max_size=6))
    raw = _encode_stream(version, packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    reader = PacketReader(client_side=True, version=version)
    got = []
    start = 0
    for cut in cuts + [len(raw)]:
        got += reader.feed(raw[start:cut])
        start = cut
    assert got == packets


def _feed_expecting_only_mqtt_errors(reader: PacketReader, chunks: list[bytes]) -> None:
    decoded = []
    for chunk in chunks:
        try:
            decoded += reader.feed(chunk)
        except MQTTError as exc:
            assert isinstance(exc.packets_before, list)
            return
    assert isinstance(decoded, list)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([None, 3, 4, 5]), st.booleans(), st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_raise_only_mqtt_errors(version, client_side, chunks) -> None:
    if client_side and version is None:
        version = 5
    if client_side:
        reader = PacketReader(client_side=True, version=version)
    else:
        reader = PacketReader()
        reader.version = version
    _feed_expecting_only_mqtt_errors(reader, chunks)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_streams(), st.data())
def test_mutated_streams_raise_only_mqtt_errors(stream, data) -> None:
    """Random bytes rarely get past the fixed header; corrupting valid packets reaches every decoder."""
    version, packets = stream
    raw = bytearray(_encode_stream(version, packets))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(raw)))
        if op == "insert" or not raw:
            raw[pos:pos] = bytes((data.draw(st.integers(0, 255)),))
        elif op == "flip":
            raw[min(pos, len(raw) - 1)] = data.draw(st.integers(0, 255))
        else:
            del raw[min(pos, len(raw) - 1)]
    cut = data.draw(st.integers(0, len(raw)))
    _feed_expecting_only_mqtt_errors(PacketReader(), [bytes(raw[:cut]), bytes(raw[cut:])])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=80), st.sampled_from([None, 3, 4, 5]), st.booleans())
def test_decode_packet_on_random_bodies_raises_only_mqtt_errors(first, body, version, from_client) -> None:
    try:
        decode_packet(first, body, version, from_client=from_client)
    except MQTTError:
        pass


def test_disconnect_is_the_last_word_but_the_reader_does_not_care() -> None:
    """Framing is the reader's job; what may follow DISCONNECT is the engine's."""
    reader = PacketReader()
    assert reader.feed(CONNECT_V4 + h("e0 00") + PINGREQ) == [CONNECT_V4_PACKET, Disconnect(), Pingreq()]
