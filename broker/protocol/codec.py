"""Sans-I/O MQTT 3.1 / 3.1.1 / 5.0 packet codec: bytes in, packet objects out, and back.

``PacketReader`` splits one connection's byte stream into packets and enforces
the rules that depend on the stream (CONNECT first and only once, packet
direction, Maximum Packet Size). ``decode_packet`` decodes a single packet and
enforces everything the packet's own bytes can tell: fixed-header flags,
field lengths, UTF-8 validity, property rules. ``encode`` / ``encode_publish``
go the other way; the encoder trusts its input (the engine built it), so it only
raises ``ValueError`` for values that cannot be put on the wire at all.

Protocol levels 3 (MQTT 3.1, "MQIsdp") and 4 (3.1.1) share one wire format here;
level 5 adds properties and reason codes.
"""

from __future__ import annotations

from typing import Callable, cast

from .errors import MalformedPacket, MQTTError, PacketTooLarge, ProtocolError, UnsupportedProtocolVersion
from .packets import (
    AUTH,
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
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
from .properties import (
    PAYLOAD_FORMAT_INDICATOR,
    RESPONSE_TOPIC,
    SUBSCRIPTION_IDENTIFIER,
    TOPIC_ALIAS,
)
from .property_codec import (
    ACK_PROPS,
    AUTH_PROPS,
    CONNACK_PROPS,
    CONNECT_PROPS,
    DISCONNECT_PROPS,
    PUBLISH_PROPS,
    SUBSCRIBE_PROPS,
    UNSUBSCRIBE_PROPS,
    WILL_PROPS,
    decode_properties,
    encode_properties,
)
from .reason_codes import PAYLOAD_FORMAT_INVALID, TOPIC_NAME_INVALID
from .wire import encode_binary, encode_str, encode_varint, pack_u16, read_binary, read_str

__all__ = ["PacketReader", "decode_packet", "encode", "encode_publish"]

DEFAULT_MAX_PACKET_SIZE = 268_435_455

# --------------------------------------------------------------------------- #
# Fixed header rules
# --------------------------------------------------------------------------- #

# Flag nibble every packet type but PUBLISH must carry [MQTT-2.1.3-1].
_REQUIRED_FLAGS = {
    CONNECT: 0, CONNACK: 0, PUBACK: 0, PUBREC: 0, PUBREL: 0b0010, PUBCOMP: 0,
    SUBSCRIBE: 0b0010, SUBACK: 0, UNSUBSCRIBE: 0b0010, UNSUBACK: 0, PINGREQ: 0,
    PINGRESP: 0, DISCONNECT: 0, AUTH: 0,
}
_NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK",
    PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP", DISCONNECT: "DISCONNECT", AUTH: "AUTH",
}
# Packets only a server sends, and packets only a client sends.
_SERVER_ONLY = frozenset({CONNACK, SUBACK, UNSUBACK, PINGRESP})
_CLIENT_ONLY = frozenset({CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ})


def _flag_problem(first: int, v5: bool) -> tuple[type[MQTTError], str] | None:
    """What is wrong with this first byte on its own, or None."""
    ptype = first >> 4
    flags = first & 0x0F
    if ptype == 0:
        return MalformedPacket, "packet type 0 is reserved"
    if ptype == AUTH and not v5:
        return MalformedPacket, "packet type 15 is reserved before MQTT 5"
    if ptype == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            return MalformedPacket, "PUBLISH with QoS 3 [MQTT-3.3.1-4]"
        if qos == 0 and flags & 0x08:
            return MalformedPacket, "PUBLISH with DUP set at QoS 0 [MQTT-3.3.1-2]"
        return None
    if flags != _REQUIRED_FLAGS[ptype]:
        return MalformedPacket, f"{_NAMES[ptype]} with reserved flags 0x{flags:X} [MQTT-2.1.3-1]"
    return None


def _stream_problem(first: int, version: int | None, client_side: bool) -> tuple[type[MQTTError], str] | None:
    """``_flag_problem`` plus the rules of the connection: order and direction."""
    problem = _flag_problem(first, version is None or version == 5)
    if problem is not None:
        return problem
    ptype = first >> 4
    name = _NAMES[ptype]
    if client_side:
        if ptype in _CLIENT_ONLY:
            return ProtocolError, f"{name} received from a server"
        return None
    if version is None:
        if ptype != CONNECT:
            return ProtocolError, f"{name} before CONNECT [MQTT-3.1.0-1]"
        return None
    if ptype == CONNECT:
        return ProtocolError, "second CONNECT [MQTT-3.1.0-2]"
    if ptype in _SERVER_ONLY:
        return ProtocolError, f"{name} received from a client"
    return None


_FLAG_RULES: dict[bool, tuple] = {v5: tuple(_flag_problem(b, v5) for b in range(256)) for v5 in (False, True)}
_STREAM_RULES: dict[tuple[int | None, bool], tuple] = {
    (version, client_side): tuple(_stream_problem(b, version, client_side) for b in range(256))
    for version in (None, 3, 4, 5)
    for client_side in (False, True)
    if not (client_side and version is None)
}

# --------------------------------------------------------------------------- #
# Reason codes each v5 packet may carry (spec 2.4 and the packet sections)
# --------------------------------------------------------------------------- #

_CONNACK_CODES = frozenset({
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C,
    0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
})
_PUBACK_CODES = frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99})  # PUBREC too
_PUBREL_CODES = frozenset({0x00, 0x92})  # PUBCOMP too
_SUBACK_CODES = frozenset({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2})
_SUBACK_CODES_V3 = frozenset({0x00, 0x01, 0x02, 0x80})
_UNSUBACK_CODES = frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91})
_DISCONNECT_CODES = frozenset({
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
    0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
})
_AUTH_CODES = frozenset({0x00, 0x18, 0x19})

# --------------------------------------------------------------------------- #
# Decoders: (first_byte, body, version, from_client) -> packet
# --------------------------------------------------------------------------- #

Body = bytes | memoryview


def _check_utf8_payload(payload: bytes, what: str) -> None:
    """Payload Format Indicator 1 promises UTF-8; a receiver may hold the sender to it (3.3.2.3.2)."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8 though its Payload Format Indicator is 1",
                            PAYLOAD_FORMAT_INVALID) from None


def _check_response_topic(props: dict, what: str) -> None:
    topic = props.get(RESPONSE_TOPIC)
    if topic is not None and (not topic or "+" in topic or "#" in topic):
        raise ProtocolError(f"{what}: Response Topic must be a topic name without wildcards [MQTT-3.3.2-14]")


def _decode_connect(first: int, body: Body, version: int | None, from_client: bool) -> Connect:
    end = len(body)
    name, pos = read_str(body, 0, end)
    if pos >= end:
        raise MalformedPacket("CONNECT ends before the protocol level")
    level = body[pos]
    if name == "MQTT":
        if level != 4 and level != 5:
            raise UnsupportedProtocolVersion(f"unsupported MQTT protocol level {level}", protocol_level=level)
    elif name == "MQIsdp":
        if level != 3:
            raise UnsupportedProtocolVersion(f"unsupported MQIsdp protocol level {level}", protocol_level=level)
    else:
        raise MalformedPacket(f"unknown protocol name {name!r} [MQTT-3.1.2-1]")
    if pos + 4 > end:
        raise MalformedPacket("CONNECT variable header truncated")
    flags = body[pos + 1]
    keepalive = (body[pos + 2] << 8) | body[pos + 3]
    pos += 4
    if flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set [MQTT-3.1.2-3]")
    will_flag = flags & 0x04
    will_qos = (flags >> 3) & 3
    will_retain = bool(flags & 0x20)
    has_password = flags & 0x40
    has_username = flags & 0x80
    if will_flag:
        if will_qos == 3:
            raise MalformedPacket("CONNECT with Will QoS 3")
    elif will_qos or will_retain:
        raise MalformedPacket("CONNECT with Will QoS/Retain but no Will Flag")
    if has_password and not has_username and level < 5:
        raise MalformedPacket("CONNECT with a password but no user name [MQTT-3.1.2-22]")
    v5 = level == 5
    if v5:
        props, pos = decode_properties(body, pos, end, CONNECT_PROPS, "CONNECT")
    else:
        props = {}
    client_id, pos = read_str(body, pos, end)
    will = None
    if will_flag:
        if v5:
            will_props, pos = decode_properties(body, pos, end, WILL_PROPS, "CONNECT will")
        else:
            will_props = {}
        will_topic, pos = read_str(body, pos, end)
        will_payload, pos = read_binary(body, pos, end)
        if not will_topic or "+" in will_topic or "#" in will_topic:
            raise ProtocolError(f"invalid Will Topic {will_topic!r}", TOPIC_NAME_INVALID)
        if will_props:
            if will_props.get(PAYLOAD_FORMAT_INDICATOR) == 1:
                _check_utf8_payload(will_payload, "Will Payload")
            _check_response_topic(will_props, "CONNECT will")
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username = None
    if has_username:
        username, pos = read_str(body, pos, end)
    password = None
    if has_password:
        password, pos = read_binary(body, pos, end)
    if pos != end:
        raise MalformedPacket("CONNECT has bytes after its payload")
    return Connect(client_id, level, name, bool(flags & 0x02), keepalive, username, password, will, props)


def _decode_connack(first: int, body: Body, version: int | None, from_client: bool) -> Connack:
    end = len(body)
    if end < 2:
        raise MalformedPacket("CONNACK shorter than 2 bytes")
    ack_flags = body[0]
    code = body[1]
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK reserved acknowledge flags are set")
    if version == 5:
        if code not in _CONNACK_CODES:
            raise ProtocolError(f"CONNACK with invalid reason code 0x{code:02X}")
        props, pos = decode_properties(body, 2, end, CONNACK_PROPS, "CONNACK")
        if pos != end:
            raise MalformedPacket("CONNACK has bytes after its properties")
    else:
        if end != 2:
            raise MalformedPacket("v3 CONNACK must be 2 bytes")
        if code > 5:
            raise ProtocolError(f"CONNACK with reserved return code {code}")
        props = {}
    if ack_flags and code:
        raise ProtocolError("CONNACK with Session Present on a refusal [MQTT-3.2.2-4]")
    return Connack(bool(ack_flags), code, props)


# PUBACK, PUBREC, PUBREL, PUBCOMP by first byte (with the flags the rules allow): decoded
# inline by the reader when they carry a packet id only (always in 3.1.1, mostly in 5).
_SHORT_ACKS: dict[int, type] = {0x40: Puback, 0x50: Pubrec, 0x62: Pubrel, 0x70: Pubcomp}

# Fixed header bytes of a packet whose Remaining Length has ``n`` significant bits, when
# that length is encoded in as few bytes as it can be (as every encoder does).
_MINIMAL_HEADER = tuple(2 + max(0, bits - 1) // 7 for bits in range(29))


def _decode_publish_span(
    first: int, buf: bytes, start: int, end: int, version: int | None, from_client: bool
) -> Publish:
    """Decode the PUBLISH whose body is ``buf[start:end]``: the hot path.

    Working on offsets into the reader's buffer avoids slicing out a body first:
    the topic and the payload are the only copies made.
    """
    if end - start < 2:
        raise MalformedPacket("PUBLISH too short for a topic length")
    pos = start + 2 + ((buf[start] << 8) | buf[start + 1])
    if pos > end:
        raise MalformedPacket("PUBLISH topic runs past the packet")
    try:
        topic = buf[start + 2 : pos].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"PUBLISH topic is not valid UTF-8: {exc.reason}") from None
    qos = (first >> 1) & 3
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("PUBLISH packet identifier runs past the packet")
        packet_id = (buf[pos] << 8) | buf[pos + 1]
        if not packet_id:
            raise ProtocolError("PUBLISH with packet identifier 0 [MQTT-2.2.1-3]")
        pos += 2
    else:
        packet_id = None
    if version == 5:
        props, pos = decode_properties(buf, pos, end, PUBLISH_PROPS, "PUBLISH")
    else:
        props = {}
    if "+" in topic or "#" in topic:
        raise ProtocolError(f"PUBLISH topic {topic!r} contains a wildcard [MQTT-3.3.2-2]", TOPIC_NAME_INVALID)
    if "\x00" in topic:
        raise MalformedPacket("PUBLISH topic contains U+0000 [MQTT-1.5.4-2]")
    payload = buf[pos:end]
    if props:
        if not topic and TOPIC_ALIAS not in props:
            raise ProtocolError("PUBLISH with an empty topic and no Topic Alias")
        if SUBSCRIPTION_IDENTIFIER in props and from_client:
            raise ProtocolError("PUBLISH from a client carries a Subscription Identifier [MQTT-3.3.4-6]")
        if props.get(PAYLOAD_FORMAT_INDICATOR) == 1:
            _check_utf8_payload(payload, "PUBLISH payload")
        if RESPONSE_TOPIC in props:
            _check_response_topic(props, "PUBLISH")
    elif not topic:
        if version == 5:
            raise ProtocolError("PUBLISH with an empty topic and no Topic Alias")
        raise ProtocolError("PUBLISH with an empty topic [MQTT-4.7.3-1]", TOPIC_NAME_INVALID)
    return Publish(topic, payload, qos, bool(first & 0x01), bool(first & 0x08), packet_id, props)


def _decode_publish(first: int, body: Body, version: int | None, from_client: bool) -> Publish:
    if type(body) is not bytes:
        body = bytes(body)
    return _decode_publish_span(first, body, 0, len(body), version, from_client)


def _ack_decoder(cls: type, codes: frozenset, name: str) -> Callable:
    """Decoder for the PUBACK/PUBREC/PUBREL/PUBCOMP shape: id [reason [properties]]."""

    def decode(first: int, body: Body, version: int | None, from_client: bool):
        end = len(body)
        if end < 2:
            raise MalformedPacket(f"{name} shorter than 2 bytes")
        packet_id = (body[0] << 8) | body[1]
        if not packet_id:
            raise ProtocolError(f"{name} with packet identifier 0")
        if end == 2:
            return cls(packet_id)
        if version != 5:
            raise MalformedPacket(f"v3 {name} must be 2 bytes")
        code = body[2]
        if code not in codes:
            raise ProtocolError(f"{name} with invalid reason code 0x{code:02X}")
        if end == 3:
            return cls(packet_id, code)
        props, pos = decode_properties(body, 3, end, ACK_PROPS, name)
        if pos != end:
            raise MalformedPacket(f"{name} has bytes after its properties")
        return cls(packet_id, code, props)

    return decode


def _read_packet_id(body: Body, end: int, name: str) -> int:
    if end < 2:
        raise MalformedPacket(f"{name} shorter than its packet identifier")
    packet_id = (body[0] << 8) | body[1]
    if not packet_id:
        raise ProtocolError(f"{name} with packet identifier 0 [MQTT-2.2.1-3]")
    return packet_id


def _decode_subscribe(first: int, body: Body, version: int | None, from_client: bool) -> Subscribe:
    end = len(body)
    packet_id = _read_packet_id(body, end, "SUBSCRIBE")
    v5 = version == 5
    if v5:
        props, pos = decode_properties(body, 2, end, SUBSCRIBE_PROPS, "SUBSCRIBE")
        sub_ids = props.get(SUBSCRIPTION_IDENTIFIER)
        if sub_ids is not None and len(sub_ids) > 1:
            raise ProtocolError("SUBSCRIBE with more than one Subscription Identifier")
    else:
        props, pos = {}, 2
    subscriptions = []
    while pos < end:
        topic_filter, pos = read_str(body, pos, end)
        if pos >= end:
            raise MalformedPacket("SUBSCRIBE topic filter without subscription options")
        opts = body[pos]
        pos += 1
        qos = opts & 0x03
        if v5:
            if opts & 0xC0:
                raise MalformedPacket("SUBSCRIBE options reserved bits set [MQTT-3.8.3-5]")
            if qos == 3:
                raise ProtocolError("SUBSCRIBE with Maximum QoS 3")
            retain_handling = (opts >> 4) & 0x03
            if retain_handling == 3:
                raise ProtocolError("SUBSCRIBE with Retain Handling 3")
            no_local = bool(opts & 0x04)
            if no_local and topic_filter.startswith("$share/"):
                raise ProtocolError("No Local set on a shared subscription [MQTT-3.8.3-4]")
            options = SubscriptionOptions(qos, no_local, bool(opts & 0x08), retain_handling)
        else:
            if opts & 0xFC or qos == 3:
                raise MalformedPacket("SUBSCRIBE requested QoS byte invalid [MQTT-3.8.3-4]")
            options = SubscriptionOptions(qos)
        subscriptions.append((topic_filter, options))
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE without any topic filter [MQTT-3.8.3-3]")
    return Subscribe(packet_id, subscriptions, props)


def _decode_suback(first: int, body: Body, version: int | None, from_client: bool) -> Suback:
    end = len(body)
    packet_id = _read_packet_id(body, end, "SUBACK")
    if version == 5:
        props, pos = decode_properties(body, 2, end, ACK_PROPS, "SUBACK")
        valid = _SUBACK_CODES
    else:
        props, pos = {}, 2
        valid = _SUBACK_CODES_V3
    codes = list(body[pos:])
    if not codes:
        raise ProtocolError("SUBACK without any reason code")
    for code in codes:
        if code not in valid:
            raise ProtocolError(f"SUBACK with invalid reason code 0x{code:02X}")
    return Suback(packet_id, codes, props)


def _decode_unsubscribe(first: int, body: Body, version: int | None, from_client: bool) -> Unsubscribe:
    end = len(body)
    packet_id = _read_packet_id(body, end, "UNSUBSCRIBE")
    if version == 5:
        props, pos = decode_properties(body, 2, end, UNSUBSCRIBE_PROPS, "UNSUBSCRIBE")
    else:
        props, pos = {}, 2
    filters = []
    while pos < end:
        topic_filter, pos = read_str(body, pos, end)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without any topic filter [MQTT-3.10.3-2]")
    return Unsubscribe(packet_id, filters, props)


def _decode_unsuback(first: int, body: Body, version: int | None, from_client: bool) -> Unsuback:
    end = len(body)
    packet_id = _read_packet_id(body, end, "UNSUBACK")
    if version != 5:
        if end != 2:
            raise MalformedPacket("v3 UNSUBACK must be 2 bytes")
        return Unsuback(packet_id)
    props, pos = decode_properties(body, 2, end, ACK_PROPS, "UNSUBACK")
    codes = list(body[pos:])
    if not codes:
        raise ProtocolError("UNSUBACK without any reason code")
    for code in codes:
        if code not in _UNSUBACK_CODES:
            raise ProtocolError(f"UNSUBACK with invalid reason code 0x{code:02X}")
    return Unsuback(packet_id, codes, props)


def _decode_pingreq(first: int, body: Body, version: int | None, from_client: bool) -> Pingreq:
    if len(body):
        raise MalformedPacket("PINGREQ with a non-zero remaining length")
    return Pingreq()


def _decode_pingresp(first: int, body: Body, version: int | None, from_client: bool) -> Pingresp:
    if len(body):
        raise MalformedPacket("PINGRESP with a non-zero remaining length")
    return Pingresp()


def _short_form_decoder(cls: type, codes: frozenset, allowed: frozenset, name: str) -> Callable:
    """Decoder for DISCONNECT and AUTH: [reason [properties]], both omitted means 0x00."""

    def decode(first: int, body: Body, version: int | None, from_client: bool):
        end = len(body)
        if end == 0:
            return cls()
        if version != 5:
            raise MalformedPacket(f"v3 {name} with a non-zero remaining length")
        code = body[0]
        if code not in codes:
            raise ProtocolError(f"{name} with invalid reason code 0x{code:02X}")
        if end == 1:
            return cls(code)
        props, pos = decode_properties(body, 1, end, allowed, name)
        if pos != end:
            raise MalformedPacket(f"{name} has bytes after its properties")
        return cls(code, props)

    return decode


_DECODERS: tuple = (
    None,
    _decode_connect,
    _decode_connack,
    _decode_publish,
    _ack_decoder(Puback, _PUBACK_CODES, "PUBACK"),
    _ack_decoder(Pubrec, _PUBACK_CODES, "PUBREC"),
    _ack_decoder(Pubrel, _PUBREL_CODES, "PUBREL"),
    _ack_decoder(Pubcomp, _PUBREL_CODES, "PUBCOMP"),
    _decode_subscribe,
    _decode_suback,
    _decode_unsubscribe,
    _decode_unsuback,
    _decode_pingreq,
    _decode_pingresp,
    _short_form_decoder(Disconnect, _DISCONNECT_CODES, DISCONNECT_PROPS, "DISCONNECT"),
    _short_form_decoder(Auth, _AUTH_CODES, AUTH_PROPS, "AUTH"),
)


def decode_packet(
    first_byte: int, body: bytes | memoryview, version: int | None, *, from_client: bool = True
) -> Packet:
    """Decode one packet from its fixed-header first byte and its body (the remaining-length bytes).

    ``version`` is the connection's protocol level, None before CONNECT (then only
    a CONNECT is accepted). Packets of either direction decode; ``from_client``
    only matters for the direction-dependent rules inside a packet (a client's
    PUBLISH must not carry a Subscription Identifier). Raises MQTTError subclasses.
    """
    problem = _FLAG_RULES[version is None or version == 5][first_byte]
    if problem is not None:
        raise problem[0](problem[1])
    ptype = first_byte >> 4
    if version is None and ptype != CONNECT:
        raise ProtocolError(f"{_NAMES[ptype]} before CONNECT [MQTT-3.1.0-1]")
    return _DECODERS[ptype](first_byte, body, version, from_client)


# --------------------------------------------------------------------------- #
# Stream reader
# --------------------------------------------------------------------------- #


class PacketReader:
    """Incremental stream decoder for one connection.

    By default it reads what a client sends to the server (``client_side=False``):
    the first packet must be a CONNECT, whose protocol level then sets
    ``version``. A bridge or test client reads a server's stream with
    ``client_side=True`` and the ``version`` it sent in its own CONNECT.
    """

    __slots__ = ("version", "max_packet_size", "client_side", "_chunks", "_buffered", "_need", "_error")

    def __init__(
        self,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        *,
        client_side: bool = False,
        version: int | None = None,
    ) -> None:
        if client_side and version is None:
            raise ValueError("a client-side reader needs the protocol version it connected with")
        self.version: int | None = version
        self.max_packet_size = max_packet_size
        self.client_side = client_side
        # Bytes of an incomplete packet, not joined until it can complete (None: none; an idle
        # connection keeps no list).
        self._chunks: list[bytes] | None = None
        self._buffered = 0
        self._need = 1  # buffered bytes needed before parsing can make progress
        self._error: MQTTError | None = None

    def feed(self, data: bytes) -> list[Packet]:
        """Append bytes, return all complete packets decoded (possibly []).

        Raises MalformedPacket, ProtocolError, PacketTooLarge or
        UnsupportedProtocolVersion; the packets decoded before the bad one in
        this call are on the exception as ``packets_before``. After an error
        the reader is dead: every further feed() raises the same error.
        """
        if self._error is not None:
            self._error.packets_before = []  # type: ignore[attr-defined]
            raise self._error
        if not data:
            return []
        if type(data) is not bytes:
            data = bytes(data)  # chunks are kept across calls, so they must be immutable
        if self._chunks:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered < self._need:
                return []
            # (No local name for the list: the chunks must go as soon as they are joined, or a
            # large packet would be held three times while it is decoded.)
            buf = b"".join(self._chunks)
            self._chunks = None
        else:
            buf = data
            if len(buf) < self._need:
                self._chunks = [buf]
                self._buffered = len(buf)
                return []

        packets: list[Packet] = []
        view = memoryview(buf)
        size = len(buf)
        pos = 0
        need = 1
        try:
            version = self.version
            client_side = self.client_side
            from_client = not client_side
            rules = _STREAM_RULES[(version, client_side)]
            limit = self.max_packet_size
            while pos < size:
                first = buf[pos]
                problem = rules[first]
                if problem is not None:
                    raise problem[0](problem[1])
                # Remaining Length: a Variable Byte Integer of at most four bytes.
                i = pos + 1
                if i >= size:
                    need = 2
                    break
                byte = buf[i]
                length = byte & 0x7F
                i += 1
                if byte & 0x80:
                    shift = 7
                    while True:
                        if i >= size:
                            break
                        byte = buf[i]
                        length |= (byte & 0x7F) << shift
                        i += 1
                        if not byte & 0x80:
                            break
                        shift += 7
                        if shift == 28:
                            raise MalformedPacket("remaining length longer than four bytes")
                    if byte & 0x80:  # ran out of bytes inside the length
                        need = i - pos + 1
                        break
                stop = i + length
                if stop - pos > limit:
                    raise PacketTooLarge(
                        f"packet of {stop - pos} bytes exceeds the maximum packet size of {limit}"
                    )
                if stop > size:
                    need = stop - pos
                    break
                if length == 2 and first in _SHORT_ACKS:  # the common acknowledgement: id only
                    packet_id = (buf[i] << 8) | buf[i + 1]
                    if not packet_id:
                        raise ProtocolError(f"{_SHORT_ACKS[first].__name__.upper()} with packet identifier 0")
                    packet = _SHORT_ACKS[first](packet_id)
                elif first & 0xF0 == 0x30:
                    packet = _decode_publish_span(first, buf, i, stop, version, from_client)
                    if first == 0x30 and version != 5 and i - pos == _MINIMAL_HEADER[length.bit_length()]:
                        # A 3.1.1 QoS 0 PUBLISH without flags is its own forwarding form.
                        packet.wire = buf if stop - pos == size else buf[pos:stop]
                else:
                    packet = _DECODERS[first >> 4](first, view[i:stop], version, from_client)
                packets.append(packet)
                pos = stop
                if version is None:  # that was the CONNECT (the rules allow nothing else)
                    version = self.version = cast(Connect, packet).protocol_level
                    rules = _STREAM_RULES[(version, client_side)]
        except MQTTError as exc:
            exc.packets_before = packets  # type: ignore[attr-defined]
            self._error = exc
            self._chunks = None
            raise
        if pos < size:
            rest = buf[pos:] if pos else buf
            self._chunks = [rest]
            self._buffered = len(rest)
        else:
            self._buffered = 0
        self._need = need
        return packets


# --------------------------------------------------------------------------- #
# Encoders
# --------------------------------------------------------------------------- #

_ZERO_PROPS = b"\x00"


def _fixed_header(first: int, length: int) -> bytes:
    if length < 128:
        return bytes((first, length))
    if length < 16384:
        return bytes((first, (length & 0x7F) | 0x80, length >> 7))
    return bytes((first,)) + encode_varint(length)


def _frame(first: int, body: bytes) -> bytes:
    return _fixed_header(first, len(body)) + body


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    properties: dict | None,
    version: int,
) -> bytes:
    """Encode a PUBLISH in one join: the broker's outbound hot path."""
    raw_topic = topic.encode("utf-8")
    topic_len = len(raw_topic)
    if topic_len > 65535:
        raise ValueError("topic longer than 65535 bytes")
    first = 0x30 | (qos << 1)
    if retain:
        first |= 0x01
    if dup:
        first |= 0x08
    props = (encode_properties(properties) if properties else _ZERO_PROPS) if version == 5 else b""
    if qos:
        if not packet_id:
            raise ValueError("a QoS 1/2 PUBLISH needs a non-zero packet identifier")
        length = 4 + topic_len + len(props) + len(payload)
        return b"".join((_fixed_header(first, length), pack_u16(topic_len), raw_topic,
                         pack_u16(packet_id), props, payload))
    length = 2 + topic_len + len(props) + len(payload)
    return b"".join((_fixed_header(first, length), pack_u16(topic_len), raw_topic, props, payload))


def _encode_connect(p: Connect, version: int) -> bytes:
    v5 = version == 5
    flags = 0
    if p.clean_start:
        flags |= 0x02
    parts = [encode_str("MQIsdp" if version == 3 else "MQTT"), b""]
    parts.append(pack_u16(p.keepalive))
    if v5:
        parts.append(encode_properties(p.properties))
    parts.append(encode_str(p.client_id))
    will = p.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        if v5:
            parts.append(encode_properties(will.properties))
        parts.append(encode_str(will.topic))
        parts.append(encode_binary(will.payload))
    if p.username is not None:
        flags |= 0x80
        parts.append(encode_str(p.username))
    if p.password is not None:
        flags |= 0x40
        parts.append(encode_binary(p.password))
    parts[1] = bytes((version, flags))
    return _frame(0x10, b"".join(parts))


def _encode_connack(p: Connack, version: int) -> bytes:
    head = bytes((1 if p.session_present else 0, p.reason_code))
    if version == 5:
        return _frame(0x20, head + encode_properties(p.properties))
    return _frame(0x20, head)


def _encode_publish_packet(p: Publish, version: int) -> bytes:
    return encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, p.properties, version)


def _ack_encoder(first: int) -> Callable:
    def encode_ack(p, version: int) -> bytes:
        head = pack_u16(p.packet_id)
        if version != 5 or (p.reason_code == 0 and not p.properties):
            return bytes((first, 2)) + head
        if not p.properties:
            return bytes((first, 3)) + head + bytes((p.reason_code,))
        return _frame(first, head + bytes((p.reason_code,)) + encode_properties(p.properties))

    return encode_ack


def _encode_subscribe(p: Subscribe, version: int) -> bytes:
    v5 = version == 5
    parts = [pack_u16(p.packet_id)]
    if v5:
        parts.append(encode_properties(p.properties))
    for topic_filter, o in p.subscriptions:
        parts.append(encode_str(topic_filter))
        if v5:
            opts = o.qos | (0x04 if o.no_local else 0) | (0x08 if o.retain_as_published else 0)
            parts.append(bytes((opts | (o.retain_handling << 4),)))
        else:
            parts.append(bytes((o.qos,)))
    return _frame(0x82, b"".join(parts))


def _encode_suback(p: Suback, version: int) -> bytes:
    if version == 5:
        return _frame(0x90, pack_u16(p.packet_id) + encode_properties(p.properties) + bytes(p.reason_codes))
    # v3.1.1 has one failure code (0x80); every v5 refusal maps onto it.
    codes = bytes(c if c < 0x80 else 0x80 for c in p.reason_codes)
    return _frame(0x90, pack_u16(p.packet_id) + codes)


def _encode_unsubscribe(p: Unsubscribe, version: int) -> bytes:
    parts = [pack_u16(p.packet_id)]
    if version == 5:
        parts.append(encode_properties(p.properties))
    parts.extend(encode_str(f) for f in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(p: Unsuback, version: int) -> bytes:
    if version == 5:
        return _frame(0xB0, pack_u16(p.packet_id) + encode_properties(p.properties) + bytes(p.reason_codes))
    return b"\xb0\x02" + pack_u16(p.packet_id)


def _encode_pingreq(p: Pingreq, version: int) -> bytes:
    return b"\xc0\x00"


def _encode_pingresp(p: Pingresp, version: int) -> bytes:
    return b"\xd0\x00"


def _encode_disconnect(p: Disconnect, version: int) -> bytes:
    if version != 5 or (p.reason_code == 0 and not p.properties):
        return b"\xe0\x00"
    if not p.properties:
        return bytes((0xE0, 1, p.reason_code))
    return _frame(0xE0, bytes((p.reason_code,)) + encode_properties(p.properties))


def _encode_auth(p: Auth, version: int) -> bytes:
    if version != 5:
        raise ValueError("AUTH exists only in MQTT 5")
    if p.reason_code == 0 and not p.properties:
        return b"\xf0\x00"
    if not p.properties:
        return bytes((0xF0, 1, p.reason_code))
    return _frame(0xF0, bytes((p.reason_code,)) + encode_properties(p.properties))


_ENCODERS: dict[int, Callable] = {
    CONNECT: _encode_connect,
    CONNACK: _encode_connack,
    PUBLISH: _encode_publish_packet,
    PUBACK: _ack_encoder(0x40),
    PUBREC: _ack_encoder(0x50),
    PUBREL: _ack_encoder(0x62),
    PUBCOMP: _ack_encoder(0x70),
    SUBSCRIBE: _encode_subscribe,
    SUBACK: _encode_suback,
    UNSUBSCRIBE: _encode_unsubscribe,
    UNSUBACK: _encode_unsuback,
    PINGREQ: _encode_pingreq,
    PINGRESP: _encode_pingresp,
    DISCONNECT: _encode_disconnect,
    AUTH: _encode_auth,
}


def encode(packet: Packet, version: int) -> bytes:
    """Encode any packet for protocol level ``version`` (3/4 = MQTT 3.1/3.1.1, 5 = MQTT 5).

    v5-only fields (properties, reason codes on acknowledgements) are dropped for
    levels 3/4, and v3.1.1 SUBACK maps every refusal onto 0x80. Acknowledgements,
    DISCONNECT and AUTH use the short forms when the reason code is 0 and there
    are no properties, as real brokers do. A CONNECT's protocol name and level
    are those of ``version`` ("MQIsdp"/3, "MQTT"/4, "MQTT"/5).
    """
    if version not in (3, 4, 5):
        raise ValueError(f"unknown protocol level {version}")
    return _ENCODERS[packet.packet_type](packet, version)
