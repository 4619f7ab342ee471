"""Encoding and decoding of MQTT 5 property blocks (spec 2.2.2).

A property block is a Variable Byte Integer length followed by (identifier,
value) pairs. Which identifiers a packet may carry, and which values are legal,
is fixed by the spec; the checks here are the ones that need nothing but the
block itself, so every packet decoder gets them for free.
"""

from __future__ import annotations

from typing import Any

from .errors import MalformedPacket, ProtocolError
from .properties import (
    ASSIGNED_CLIENT_IDENTIFIER,
    AUTHENTICATION_DATA,
    AUTHENTICATION_METHOD,
    CONTENT_TYPE,
    CORRELATION_DATA,
    MAXIMUM_PACKET_SIZE,
    MAXIMUM_QOS,
    MESSAGE_EXPIRY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    REQUEST_PROBLEM_INFORMATION,
    REQUEST_RESPONSE_INFORMATION,
    RESPONSE_INFORMATION,
    RESPONSE_TOPIC,
    RETAIN_AVAILABLE,
    SERVER_KEEP_ALIVE,
    SERVER_REFERENCE,
    SESSION_EXPIRY_INTERVAL,
    SHARED_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    TOPIC_ALIAS,
    TOPIC_ALIAS_MAXIMUM,
    USER_PROPERTY,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    WILL_DELAY_INTERVAL,
)
from .reason_codes import TOPIC_ALIAS_INVALID
from .wire import (
    encode_binary,
    encode_str,
    encode_varint,
    pack_u16,
    pack_u32,
    read_binary,
    read_str,
    read_u32,
    read_varint,
)

# Value types (spec 2.2.2.2, table "Properties").
BYTE, U16, U32, VARINT, STRING, BINARY, STRING_PAIR = range(7)

PROPERTY_TYPES: dict[int, int] = {
    PAYLOAD_FORMAT_INDICATOR: BYTE,
    MESSAGE_EXPIRY_INTERVAL: U32,
    CONTENT_TYPE: STRING,
    RESPONSE_TOPIC: STRING,
    CORRELATION_DATA: BINARY,
    SUBSCRIPTION_IDENTIFIER: VARINT,
    SESSION_EXPIRY_INTERVAL: U32,
    ASSIGNED_CLIENT_IDENTIFIER: STRING,
    SERVER_KEEP_ALIVE: U16,
    AUTHENTICATION_METHOD: STRING,
    AUTHENTICATION_DATA: BINARY,
    REQUEST_PROBLEM_INFORMATION: BYTE,
    WILL_DELAY_INTERVAL: U32,
    REQUEST_RESPONSE_INFORMATION: BYTE,
    RESPONSE_INFORMATION: STRING,
    SERVER_REFERENCE: STRING,
    REASON_STRING: STRING,
    RECEIVE_MAXIMUM: U16,
    TOPIC_ALIAS_MAXIMUM: U16,
    TOPIC_ALIAS: U16,
    MAXIMUM_QOS: BYTE,
    RETAIN_AVAILABLE: BYTE,
    USER_PROPERTY: STRING_PAIR,
    MAXIMUM_PACKET_SIZE: U32,
    WILDCARD_SUBSCRIPTION_AVAILABLE: BYTE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE: BYTE,
    SHARED_SUBSCRIPTION_AVAILABLE: BYTE,
}
# Index by identifier for the decoder loop: -1 means "no such property".
_TYPE_BY_ID: tuple[int, ...] = tuple(PROPERTY_TYPES.get(i, -1) for i in range(256))

# Which packet may carry which property (spec 2.2.2.2). The will properties of a
# CONNECT form their own block with their own set (3.1.3.2).
CONNECT_PROPS = frozenset({
    SESSION_EXPIRY_INTERVAL, AUTHENTICATION_METHOD, AUTHENTICATION_DATA,
    REQUEST_PROBLEM_INFORMATION, REQUEST_RESPONSE_INFORMATION, RECEIVE_MAXIMUM,
    TOPIC_ALIAS_MAXIMUM, USER_PROPERTY, MAXIMUM_PACKET_SIZE,
})
WILL_PROPS = frozenset({
    PAYLOAD_FORMAT_INDICATOR, MESSAGE_EXPIRY_INTERVAL, CONTENT_TYPE, RESPONSE_TOPIC,
    CORRELATION_DATA, WILL_DELAY_INTERVAL, USER_PROPERTY,
})
CONNACK_PROPS = frozenset({
    SESSION_EXPIRY_INTERVAL, ASSIGNED_CLIENT_IDENTIFIER, SERVER_KEEP_ALIVE,
    AUTHENTICATION_METHOD, AUTHENTICATION_DATA, RESPONSE_INFORMATION, SERVER_REFERENCE,
    REASON_STRING, RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, MAXIMUM_QOS, RETAIN_AVAILABLE,
    USER_PROPERTY, MAXIMUM_PACKET_SIZE, WILDCARD_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE, SHARED_SUBSCRIPTION_AVAILABLE,
})
PUBLISH_PROPS = frozenset({
    PAYLOAD_FORMAT_INDICATOR, MESSAGE_EXPIRY_INTERVAL, CONTENT_TYPE, RESPONSE_TOPIC,
    CORRELATION_DATA, SUBSCRIPTION_IDENTIFIER, TOPIC_ALIAS, USER_PROPERTY,
})
ACK_PROPS = frozenset({REASON_STRING, USER_PROPERTY})  # PUBACK PUBREC PUBREL PUBCOMP SUBACK UNSUBACK
SUBSCRIBE_PROPS = frozenset({SUBSCRIPTION_IDENTIFIER, USER_PROPERTY})
UNSUBSCRIBE_PROPS = frozenset({USER_PROPERTY})
DISCONNECT_PROPS = frozenset({SESSION_EXPIRY_INTERVAL, SERVER_REFERENCE, REASON_STRING, USER_PROPERTY})
AUTH_PROPS = frozenset({AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING, USER_PROPERTY})

# Byte properties whose only legal values are 0 and 1 (a Protocol Error otherwise:
# 3.1.2.11.6, 3.1.2.11.7, 3.2.2.3.5, 3.2.2.3.11-13; Maximum QoS 3.2.2.3.4;
# Payload Format Indicator has only the two values defined in 3.3.2.3.2).
_BOOLEAN_BYTES = frozenset({
    PAYLOAD_FORMAT_INDICATOR, REQUEST_PROBLEM_INFORMATION, REQUEST_RESPONSE_INFORMATION,
    MAXIMUM_QOS, RETAIN_AVAILABLE, WILDCARD_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE, SHARED_SUBSCRIPTION_AVAILABLE,
})

_EMPTY_BLOCK = b"\x00"


def decode_properties(
    buf: bytes | memoryview, pos: int, end: int, allowed: frozenset, where: str
) -> tuple[dict, int]:
    """Decode the property block at ``pos``; ``where`` names the packet for error messages.

    Returns the properties and the position just past the block. USER_PROPERTY
    and SUBSCRIPTION_IDENTIFIER values are lists; any other repeated property
    is a Protocol Error, as are the out-of-range values the spec names.
    """
    if pos >= end:
        raise MalformedPacket(f"{where}: property length missing")
    length = buf[pos]
    if length == 0:
        return {}, pos + 1
    if length & 0x80:
        length, pos = read_varint(buf, pos, end)
    else:
        pos += 1
    stop = pos + length
    if stop > end:
        raise MalformedPacket(f"{where}: property length runs past the packet")
    props: dict = {}
    value: Any
    while pos < stop:
        pid = buf[pos]
        pos += 1
        if pid not in allowed:
            if _TYPE_BY_ID[pid] < 0:
                raise MalformedPacket(f"{where}: unknown property identifier 0x{pid:02X}")
            raise MalformedPacket(f"{where}: property 0x{pid:02X} is not allowed in this packet")
        kind = _TYPE_BY_ID[pid]
        if kind == BYTE:
            if pos >= stop:
                raise MalformedPacket(f"{where}: property 0x{pid:02X} runs past its block")
            value = buf[pos]
            pos += 1
            if value > 1 and pid in _BOOLEAN_BYTES:
                raise ProtocolError(f"{where}: property 0x{pid:02X} must be 0 or 1, got {value}")
        elif kind == STRING:
            value, pos = read_str(buf, pos, stop)
        elif kind == U32:
            value, pos = read_u32(buf, pos, stop)
        elif kind == U16:
            if pos + 2 > stop:
                raise MalformedPacket(f"{where}: property 0x{pid:02X} runs past its block")
            value = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
            if value == 0:
                if pid == RECEIVE_MAXIMUM:
                    raise ProtocolError(f"{where}: Receive Maximum of 0")
                if pid == TOPIC_ALIAS:
                    raise ProtocolError(f"{where}: Topic Alias of 0 [MQTT-3.3.2-8]", TOPIC_ALIAS_INVALID)
        elif kind == BINARY:
            value, pos = read_binary(buf, pos, stop)
        elif kind == VARINT:  # only SUBSCRIPTION_IDENTIFIER, which may repeat in a PUBLISH
            value, pos = read_varint(buf, pos, stop)
            if value == 0:
                raise ProtocolError(f"{where}: Subscription Identifier of 0")
            ids = props.get(pid)
            if ids is None:
                props[pid] = [value]
            else:
                ids.append(value)
            continue
        else:  # STRING_PAIR: only USER_PROPERTY, which may repeat anywhere
            name, pos = read_str(buf, pos, stop)
            text, pos = read_str(buf, pos, stop)
            pairs = props.get(pid)
            if pairs is None:
                props[pid] = [(name, text)]
            else:
                pairs.append((name, text))
            continue
        if pid in props:
            raise ProtocolError(f"{where}: property 0x{pid:02X} included more than once")
        props[pid] = value
    if MAXIMUM_PACKET_SIZE in props and props[MAXIMUM_PACKET_SIZE] == 0:
        raise ProtocolError(f"{where}: Maximum Packet Size of 0")
    if AUTHENTICATION_DATA in props and AUTHENTICATION_METHOD not in props:
        raise ProtocolError(f"{where}: Authentication Data without Authentication Method")
    return props, stop


def _encode_one(pid: int, value: Any) -> bytes:
    kind = PROPERTY_TYPES.get(pid)
    if kind is None:
        raise ValueError(f"unknown property identifier 0x{pid:02X}")
    head = _PID_BYTES[pid]
    if kind == BYTE:
        return head + bytes((value,))
    if kind == U16:
        return head + pack_u16(value)
    if kind == U32:
        return head + pack_u32(value)
    if kind == STRING:
        return head + encode_str(value)
    if kind == BINARY:
        return head + encode_binary(value)
    if kind == VARINT:  # SUBSCRIPTION_IDENTIFIER: a list, or a lone int for convenience
        if isinstance(value, int):
            return head + encode_varint(value)
        return b"".join(head + encode_varint(v) for v in value)
    return b"".join(head + encode_str(k) + encode_str(v) for k, v in value)


_PID_BYTES = {pid: bytes((pid,)) for pid in PROPERTY_TYPES}


def encode_properties(props: dict | None) -> bytes:
    """The property block (length included) for ``props``; ``b"\\x00"`` when empty.

    USER_PROPERTY must be a list of (name, value) pairs and SUBSCRIPTION_IDENTIFIER
    a list of ints; each element becomes one property on the wire, in order.
    """
    if not props:
        return _EMPTY_BLOCK
    body = b"".join([_encode_one(pid, value) for pid, value in props.items()])
    return encode_varint(len(body)) + body
