"""MQTT 3.1.1 packets as bytes, without I/O: what the session core sends and parses.

Plain functions over bytes, so the same code runs on MicroPython and CPython and
can be tested without a socket. Constants use micropython.const with leading
underscores: on a device they vanish at compile time and cost no RAM.
"""
import struct

try:
    from micropython import const
except ImportError:  # CPython
    from .compat import const  # type: ignore[no-redef,assignment,unused-ignore]


_CONNECT = const(0x10)
_SUBSCRIBE = const(0x82)


class MQTTException(Exception):
    """The broker refused (CONNACK code, SUBACK 0x80) or broke the protocol."""


class OutboxFull(MQTTException):
    """publish() with on_full="raise" (or "block", once its timeout is over) found the outbox full."""


def to_bytes(x):
    """Topics and payloads may be given as str (like umqtt); the wire wants bytes."""
    if isinstance(x, str):
        return x.encode()
    return bytes(x)


def field(b):
    """A length-prefixed MQTT string or binary field."""
    return struct.pack("!H", len(b)) + b


def packet(first, body):
    """Fixed header (type byte + variable-length remaining length) followed by body."""
    n = len(body)
    head = bytearray((first,))
    while n > 0x7F:
        head.append(n & 0x7F | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + body


def connect(client_id, clean, keepalive, auth, will):
    """CONNECT; auth is (user, password or None) or None, will (topic, msg, retain, qos) or None."""
    flags = 2 if clean else 0
    tail = field(client_id)
    if will:
        flags |= 4 | will[3] << 3 | (0x20 if will[2] else 0)
        tail += field(will[0]) + field(will[1])
    if auth:
        flags |= 0x80
        tail += field(auth[0])
        if auth[1] is not None:
            flags |= 0x40
            tail += field(auth[1])
    return packet(_CONNECT, b"\x00\x04MQTT\x04" + struct.pack("!BH", flags, keepalive) + tail)


def request(kind, pid, topic, qos):
    """SUBSCRIBE (kind 0x82, one topic filter) or UNSUBSCRIBE (kind 0xA2)."""
    body = struct.pack("!H", pid) + field(topic)
    if kind == _SUBSCRIBE:
        body += bytes((qos,))
    return packet(kind, body)


def frame(buf, pos=0, limit=-1):
    """The packet starting at buf[pos]: (first_byte, body_start, end), with end past
    limit (default len(buf)) while its body is incomplete; None while even the fixed
    header is. Reads the buffer in place (no slicing, no allocation)."""
    if limit < 0:
        limit = len(buf)
    n = 0
    shift = 0
    i = pos + 1
    while True:
        if i >= limit:
            return None
        b = buf[i]
        n |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MQTTException("bad remaining length")
    return buf[pos], i, i + n
