"""Packet table for MQTT 3.1.1 (protocol level 4) and MQTT 3.1 (level 3, "MQIsdp").

Every byte string is written out by hand from the spec's packet layouts, so the
decoder is never checked against its own encoder.
"""

from __future__ import annotations

import pytest

from broker.protocol.errors import MalformedPacket, PacketTooLarge, ProtocolError, UnsupportedProtocolVersion
from broker.protocol.packets import (
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
from codec_table import CLIENT_BOUND, Case, Err, check_case, h

MALFORMED = Err(MalformedPacket, 0x81)
PROTOCOL = Err(ProtocolError, 0x82)
TOPIC_INVALID = Err(ProtocolError, 0x90)

# "MQTT" protocol name with its length, the start of every v3.1.1/v5 CONNECT.
MQTT = "00 04 4d 51 54 54"

CASES = [
    # ---------------------------------------------------------------- CONNECT
    Case("connect minimal clean session",
         h(f"10 0c {MQTT} 04 02 00 3c 00 00"), None,
         Connect("", 4, "MQTT", True, 60)),
    Case("connect client id",
         h(f"10 0f {MQTT} 04 02 00 3c 00 03 7a 65 6e"), None,
         Connect("zen", 4, "MQTT", True, 60)),
    Case("connect persistent session, keepalive 0",
         h(f"10 0f {MQTT} 04 00 00 00 00 03 7a 65 6e"), None,
         Connect("zen", 4, "MQTT", False, 0)),
    Case("connect will, username, password",
         h(f"10 2a {MQTT} 04 ee 00 1e 00 03 7a 65 6e"
           " 00 03 6c 77 74  00 09 6e 6f 74 20 61 67 61 69 6e"
           " 00 05 6d 6f 63 68 69  00 02 70 77"), None,
         Connect("zen", 4, "MQTT", True, 30, "mochi", b"pw", Will("lwt", b"not again", 1, True))),
    Case("connect username only",
         h(f"10 12 {MQTT} 04 82 00 3c 00 03 7a 65 6e 00 01 75"), None,
         Connect("zen", 4, "MQTT", True, 60, "u")),
    Case("connect will qos 2 with empty will payload",
         h(f"10 11 {MQTT} 04 16 00 00 00 00 00 01 74 00 00"), None,
         Connect("", 4, "MQTT", True, 0, will=Will("t", b"", 2, False))),
    Case("connect binary password with zero bytes",
         h(f"10 14 {MQTT} 04 c2 00 00 00 00 00 01 75 00 03 00 ff 00"), None,
         Connect("", 4, "MQTT", True, 0, "u", b"\x00\xff\x00")),
    Case("connect keepalive 65535",
         h(f"10 0c {MQTT} 04 02 ff ff 00 00"), None,
         Connect("", 4, "MQTT", True, 65535)),
    Case("connect MQTT 3.1 (MQIsdp level 3)",
         h("10 11 00 06 4d 51 49 73 64 70 03 00 00 00 00 03 61 62 63"), None,
         Connect("abc", 3, "MQIsdp", False, 0)),
    Case("connect MQTT 3.1 with will and credentials",
         h("10 1b 00 06 4d 51 49 73 64 70 03 e6 00 0a 00 01 63"
           " 00 01 77 00 01 78 00 01 75 00 01 70"), None,
         Connect("c", 3, "MQIsdp", True, 10, "u", b"p", Will("w", b"x", 0, True))),
    Case("connect unknown protocol name",
         h("10 0c 00 04 4d 51 54 58 04 02 00 3c 00 00"), None, MALFORMED),
    Case("connect protocol name not UTF-8",
         h("10 0c 00 04 4d 51 ff 54 04 02 00 3c 00 00"), None, MALFORMED),
    Case("connect MQTT name with level 3",
         h(f"10 0c {MQTT} 03 02 00 3c 00 00"), None, Err(UnsupportedProtocolVersion, 0x84)),
    Case("connect MQTT name with level 6",
         h(f"10 0c {MQTT} 06 02 00 3c 00 00"), None, Err(UnsupportedProtocolVersion, 0x84)),
    Case("connect MQIsdp name with level 4",
         h("10 11 00 06 4d 51 49 73 64 70 04 00 00 00 00 03 61 62 63"), None,
         Err(UnsupportedProtocolVersion, 0x84)),
    Case("connect ends after the protocol name",
         h(f"10 06 {MQTT}"), None, MALFORMED),
    Case("connect ends inside the keepalive",
         h(f"10 09 {MQTT} 04 02 00"), None, MALFORMED),
    Case("connect reserved flag set",
         h(f"10 0c {MQTT} 04 03 00 3c 00 00"), None, MALFORMED),
    Case("connect will qos without will flag",
         h(f"10 0c {MQTT} 04 0a 00 3c 00 00"), None, MALFORMED),
    Case("connect will retain without will flag",
         h(f"10 0c {MQTT} 04 22 00 3c 00 00"), None, MALFORMED),
    Case("connect will qos 3",
         h(f"10 11 {MQTT} 04 1e 00 00 00 00 00 01 74 00 00"), None, MALFORMED),
    Case("connect password without username",
         h(f"10 0f {MQTT} 04 42 00 00 00 00 00 01 70"), None, MALFORMED),
    Case("connect MQTT 3.1 password without username",
         h("10 14 00 06 4d 51 49 73 64 70 03 42 00 00 00 03 61 62 63 00 01 70"), None, MALFORMED),
    Case("connect client id length past the end",
         h(f"10 0c {MQTT} 04 02 00 3c 00 05"), None, MALFORMED),
    Case("connect client id length cut in half",
         h(f"10 0b {MQTT} 04 02 00 3c 00"), None, MALFORMED),
    Case("connect trailing garbage",
         h(f"10 0d {MQTT} 04 02 00 3c 00 00 ff"), None, MALFORMED),
    Case("connect client id invalid UTF-8",
         h(f"10 0e {MQTT} 04 02 00 3c 00 02 c3 28"), None, MALFORMED),
    Case("connect client id contains U+0000",
         h(f"10 0e {MQTT} 04 02 00 3c 00 02 61 00"), None, MALFORMED),
    Case("connect client id encodes a surrogate",
         h(f"10 0f {MQTT} 04 02 00 3c 00 03 ed a0 80"), None, MALFORMED),
    Case("connect client id overlong encoding of '/'",
         h(f"10 0e {MQTT} 04 02 00 3c 00 02 c0 af"), None, MALFORMED),
    Case("connect username flag but no username",
         h(f"10 0c {MQTT} 04 82 00 00 00 00"), None, MALFORMED),
    Case("connect will flag but no will payload",
         h(f"10 0f {MQTT} 04 06 00 00 00 00 00 01 74"), None, MALFORMED),
    Case("connect will topic with wildcard",
         h(f"10 13 {MQTT} 04 06 00 00 00 00 00 03 61 2f 23 00 00"), None, TOPIC_INVALID),
    Case("connect empty will topic",
         h(f"10 10 {MQTT} 04 06 00 00 00 00 00 00 00 00"), None, TOPIC_INVALID),
    Case("connect with reserved flags in fixed header",
         h(f"11 0c {MQTT} 04 02 00 3c 00 00"), None, MALFORMED),
    Case("second connect",
         h(f"10 0c {MQTT} 04 02 00 3c 00 00"), 4, PROTOCOL),
    Case("publish before connect",
         h("30 07 00 05 61 2f 62 2f 63"), None, PROTOCOL),
    Case("pingreq before connect",
         h("c0 00"), None, PROTOCOL),
    # ---------------------------------------------------------------- CONNACK
    Case("connack accepted",
         h("20 02 00 00"), 4, Connack(False, 0), CLIENT_BOUND),
    Case("connack session present",
         h("20 02 01 00"), 4, Connack(True, 0), CLIENT_BOUND),
    Case("connack bad username or password",
         h("20 02 00 04"), 4, Connack(False, 4), CLIENT_BOUND),
    Case("connack not authorized",
         h("20 02 00 05"), 4, Connack(False, 5), CLIENT_BOUND),
    Case("connack reserved acknowledge flags",
         h("20 02 02 00"), 4, MALFORMED, CLIENT_BOUND),
    Case("connack session present on a refusal",
         h("20 02 01 05"), 4, PROTOCOL, CLIENT_BOUND),
    Case("connack reserved return code 6",
         h("20 02 00 06"), 4, PROTOCOL, CLIENT_BOUND),
    Case("connack too long",
         h("20 03 00 00 00"), 4, MALFORMED, CLIENT_BOUND),
    Case("connack too short",
         h("20 01 00"), 4, MALFORMED, CLIENT_BOUND),
    Case("connack with flags nibble",
         h("21 02 00 00"), 4, MALFORMED, CLIENT_BOUND),
    Case("connack sent by a client",
         h("20 02 00 00"), 4, PROTOCOL),
    Case("connect sent by a server",
         h(f"10 0c {MQTT} 04 02 00 3c 00 00"), 4, PROTOCOL, CLIENT_BOUND),
    # ---------------------------------------------------------------- PUBLISH
    Case("publish qos 0",
         h("30 0c 00 05 61 2f 62 2f 63 68 65 6c 6c 6f"), 4,
         Publish("a/b/c", b"hello")),
    Case("publish qos 0 retain",
         h("31 0c 00 05 61 2f 62 2f 63 68 65 6c 6c 6f"), 4,
         Publish("a/b/c", b"hello", 0, True)),
    Case("publish qos 1",
         h("32 0e 00 05 61 2f 62 2f 63 00 07 68 65 6c 6c 6f"), 4,
         Publish("a/b/c", b"hello", 1, packet_id=7)),
    Case("publish qos 2 dup retain, packet id 65535",
         h("3d 0e 00 05 61 2f 62 2f 63 ff ff 68 65 6c 6c 6f"), 4,
         Publish("a/b/c", b"hello", 2, True, True, 65535)),
    Case("publish qos 1 dup",
         h("3a 09 00 05 61 2f 62 2f 63 01 00"), 4,
         Publish("a/b/c", b"", 1, False, True, 256)),
    Case("publish empty payload",
         h("30 07 00 05 61 2f 62 2f 63"), 4,
         Publish("a/b/c", b"")),
    Case("publish binary payload",
         h("30 06 00 01 78 00 ff 00"), 4,
         Publish("x", b"\x00\xff\x00")),
    Case("publish UTF-8 topic",
         h("30 08 00 06 e6 b5 8b e8 af 95"), 4,
         Publish("\u6d4b\u8bd5", b"")),
    Case("publish topic with spaces and $",
         h("30 07 00 05 24 53 59 53 20"), 4,
         Publish("$SYS ", b"")),
    Case("publish two-byte remaining length (203)",
         h("30 cb 01 00 01 61") + b"x" * 200, 4,
         Publish("a", b"x" * 200)),
    Case("publish qos 3",
         h("36 0e 00 05 61 2f 62 2f 63 00 07 68 65 6c 6c 6f"), 4, MALFORMED),
    Case("publish dup at qos 0",
         h("38 0c 00 05 61 2f 62 2f 63 68 65 6c 6c 6f"), 4, MALFORMED),
    Case("publish topic with +",
         h("30 05 00 03 61 2f 2b"), 4, TOPIC_INVALID),
    Case("publish topic with #",
         h("30 05 00 03 61 2f 23"), 4, TOPIC_INVALID),
    Case("publish topic #",
         h("30 03 00 01 23"), 4, TOPIC_INVALID),
    Case("publish empty topic",
         h("30 02 00 00"), 4, TOPIC_INVALID),
    Case("publish qos 1 packet id 0",
         h("32 09 00 05 61 2f 62 2f 63 00 00"), 4, PROTOCOL),
    Case("publish qos 1 packet id cut short",
         h("32 08 00 05 61 2f 62 2f 63 00"), 4, MALFORMED),
    Case("publish topic runs past the packet",
         h("30 04 00 05 61 62"), 4, MALFORMED),
    Case("publish shorter than a topic length",
         h("30 01 00"), 4, MALFORMED),
    Case("publish no body at all",
         h("30 00"), 4, MALFORMED),
    Case("publish topic not UTF-8",
         h("30 04 00 02 c3 28"), 4, MALFORMED),
    Case("publish topic contains U+0000",
         h("30 05 00 03 61 00 62"), 4, MALFORMED),
    Case("publish remaining length of five bytes",
         h("30 80 80 80 80 01"), 4, MALFORMED),
    # ------------------------------------------------ PUBACK PUBREC PUBREL PUBCOMP
    Case("puback", h("40 02 00 07"), 4, Puback(7)),
    Case("pubrec", h("50 02 00 07"), 4, Pubrec(7)),
    Case("pubrel", h("62 02 00 07"), 4, Pubrel(7)),
    Case("pubcomp", h("70 02 00 07"), 4, Pubcomp(7)),
    Case("puback packet id 65535", h("40 02 ff ff"), 4, Puback(65535)),
    Case("puback from the server", h("40 02 12 34"), 4, Puback(0x1234), CLIENT_BOUND),
    Case("pubrel from the server", h("62 02 00 01"), 4, Pubrel(1), CLIENT_BOUND),
    Case("pubrel without its 0b0010 flags", h("60 02 00 07"), 4, MALFORMED),
    Case("pubrel with flags 0b0011", h("63 02 00 07"), 4, MALFORMED),
    Case("puback with flags", h("42 02 00 07"), 4, MALFORMED),
    Case("pubrec with flags", h("58 02 00 07"), 4, MALFORMED),
    Case("pubcomp with flags", h("71 02 00 07"), 4, MALFORMED),
    Case("puback reason code in v3.1.1", h("40 03 00 07 00"), 4, MALFORMED),
    Case("pubcomp too short", h("70 01 00"), 4, MALFORMED),
    Case("pubrec empty", h("50 00"), 4, MALFORMED),
    Case("puback packet id 0", h("40 02 00 00"), 4, PROTOCOL),
    Case("pubrel packet id 0", h("62 02 00 00"), 4, PROTOCOL),
    # ---------------------------------------------------------------- SUBSCRIBE
    Case("subscribe one filter",
         h("82 0a 00 01 00 05 61 2f 62 2f 63 01"), 4,
         Subscribe(1, [("a/b/c", SubscriptionOptions(1))])),
    Case("subscribe three filters",
         h("82 16 00 0f 00 03 61 2f 62 00 00 03 63 2f 64 01 00 05 78 2f 2b 2f 79 02"), 4,
         Subscribe(15, [("a/b", SubscriptionOptions(0)), ("c/d", SubscriptionOptions(1)),
                        ("x/+/y", SubscriptionOptions(2))])),
    Case("subscribe filter is decoded, not judged",
         h("82 07 00 01 00 02 61 23 00"), 4,
         Subscribe(1, [("a#", SubscriptionOptions(0))])),
    Case("subscribe without its 0b0010 flags",
         h("80 0a 00 01 00 05 61 2f 62 2f 63 01"), 4, MALFORMED),
    Case("subscribe no filters",
         h("82 02 00 01"), 4, PROTOCOL),
    Case("subscribe packet id 0",
         h("82 0a 00 00 00 05 61 2f 62 2f 63 01"), 4, PROTOCOL),
    Case("subscribe qos 3",
         h("82 0a 00 01 00 05 61 2f 62 2f 63 03"), 4, MALFORMED),
    Case("subscribe reserved bits of the qos byte",
         h("82 0a 00 01 00 05 61 2f 62 2f 63 04"), 4, MALFORMED),
    Case("subscribe missing qos byte",
         h("82 09 00 01 00 05 61 2f 62 2f 63"), 4, MALFORMED),
    Case("subscribe filter runs past the packet",
         h("82 06 00 01 00 05 61 2f"), 4, MALFORMED),
    Case("subscribe filter not UTF-8",
         h("82 07 00 01 00 02 c3 28 00"), 4, MALFORMED),
    Case("subscribe sent by a server",
         h("82 0a 00 01 00 05 61 2f 62 2f 63 01"), 4, PROTOCOL, CLIENT_BOUND),
    # ---------------------------------------------------------------- SUBACK
    Case("suback one code",
         h("90 03 00 01 01"), 4, Suback(1, [1]), CLIENT_BOUND),
    Case("suback every return code",
         h("90 06 00 02 00 01 02 80"), 4, Suback(2, [0, 1, 2, 0x80]), CLIENT_BOUND),
    Case("suback reserved return code",
         h("90 03 00 01 03"), 4, PROTOCOL, CLIENT_BOUND),
    Case("suback v5-only reason code",
         h("90 03 00 01 87"), 4, PROTOCOL, CLIENT_BOUND),
    Case("suback without codes",
         h("90 02 00 01"), 4, PROTOCOL, CLIENT_BOUND),
    Case("suback with flags",
         h("92 03 00 01 00"), 4, MALFORMED, CLIENT_BOUND),
    Case("suback sent by a client",
         h("90 03 00 01 01"), 4, PROTOCOL),
    # ---------------------------------------------------------------- UNSUBSCRIBE
    Case("unsubscribe one filter",
         h("a2 07 00 01 00 03 61 2f 62"), 4, Unsubscribe(1, ["a/b"])),
    Case("unsubscribe two filters",
         h("a2 0d 00 02 00 03 61 2f 62 00 04 63 2f 2f 64"), 4, Unsubscribe(2, ["a/b", "c//d"])),
    Case("unsubscribe without its 0b0010 flags",
         h("a0 07 00 01 00 03 61 2f 62"), 4, MALFORMED),
    Case("unsubscribe no filters",
         h("a2 02 00 01"), 4, PROTOCOL),
    Case("unsubscribe packet id 0",
         h("a2 07 00 00 00 03 61 2f 62"), 4, PROTOCOL),
    Case("unsubscribe filter runs past the packet",
         h("a2 05 00 01 00 05 61"), 4, MALFORMED),
    # ---------------------------------------------------------------- UNSUBACK
    Case("unsuback", h("b0 02 00 01"), 4, Unsuback(1), CLIENT_BOUND),
    Case("unsuback with a reason code in v3.1.1", h("b0 03 00 01 00"), 4, MALFORMED, CLIENT_BOUND),
    Case("unsuback packet id 0", h("b0 02 00 00"), 4, PROTOCOL, CLIENT_BOUND),
    Case("unsuback with flags", h("b1 02 00 01"), 4, MALFORMED, CLIENT_BOUND),
    # ---------------------------------------------------------------- PINGREQ PINGRESP
    Case("pingreq", h("c0 00"), 4, Pingreq()),
    Case("pingreq with a body", h("c0 01 00"), 4, MALFORMED),
    Case("pingreq with flags", h("c1 00"), 4, MALFORMED),
    Case("pingresp", h("d0 00"), 4, Pingresp(), CLIENT_BOUND),
    Case("pingresp with a body", h("d0 01 00"), 4, MALFORMED, CLIENT_BOUND),
    Case("pingresp sent by a client", h("d0 00"), 4, PROTOCOL),
    Case("pingreq sent by a server", h("c0 00"), 4, PROTOCOL, CLIENT_BOUND),
    # ---------------------------------------------------------------- DISCONNECT, reserved types
    Case("disconnect", h("e0 00"), 4, Disconnect()),
    Case("disconnect with a reason code in v3.1.1", h("e0 01 00"), 4, MALFORMED),
    Case("disconnect with flags", h("e2 00"), 4, MALFORMED),
    Case("packet type 15 in v3.1.1", h("f0 00"), 4, MALFORMED),
    Case("packet type 0", h("00 00"), 4, MALFORMED),
    Case("packet type 0 before connect", h("00 00"), None, MALFORMED),
    # ---------------------------------------------------------------- MQTT 3.1 connection
    Case("MQTT 3.1 publish", h("32 07 00 01 74 00 01 68 69"), 3, Publish("t", b"hi", 1, packet_id=1)),
    Case("MQTT 3.1 subscribe", h("82 06 00 01 00 01 74 02"), 3, Subscribe(1, [("t", SubscriptionOptions(2))])),
    Case("MQTT 3.1 suback", h("90 03 00 01 80"), 3, Suback(1, [0x80]), CLIENT_BOUND),
    Case("MQTT 3.1 auth type", h("f0 00"), 3, MALFORMED),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_v311_packet_table(case: Case) -> None:
    check_case(case)


def test_table_names_are_unique() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))


def test_unsupported_level_carries_the_level() -> None:
    from broker.protocol.codec import PacketReader

    for level, raw in ((3, h(f"10 0c {MQTT} 03 02 00 3c 00 00")), (6, h(f"10 0c {MQTT} 06 02 00 3c 00 00"))):
        with pytest.raises(UnsupportedProtocolVersion) as info:
            PacketReader().feed(raw)
        assert info.value.protocol_level == level


def test_unsupported_level_is_reported_before_the_rest_is_parsed() -> None:
    """A future level may lay CONNECT out differently: the level alone must decide."""
    from broker.protocol.codec import PacketReader

    with pytest.raises(UnsupportedProtocolVersion) as info:
        PacketReader().feed(h(f"10 08 {MQTT} 07 ff"))
    assert info.value.protocol_level == 7


def test_too_large_is_an_error_class_of_its_own() -> None:
    from broker.protocol.codec import PacketReader

    reader = PacketReader(max_packet_size=10)
    reader.version = 4
    with pytest.raises(PacketTooLarge) as info:
        reader.feed(h("30 0c 00 05 61 2f 62 2f 63 68 65 6c 6c 6f"))
    assert info.value.reason_code == 0x95
