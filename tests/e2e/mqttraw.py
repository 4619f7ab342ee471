"""A byte-level MQTT client for end-to-end tests that need full control of the wire.

It has its own small encoder and decoder on purpose: the broker's codec is the
code under test, and a client that shared it would hide symmetric bugs (a field
encoded and decoded wrongly in the same way on both sides). It only covers what
the tests need: every packet a client sends, every packet a server sends.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass, field

# Packet types (fixed header, high nibble).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8, 9, 10, 11, 12, 13, 14, 15,
)
TYPE_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

# v5 property identifiers (spec 2.2.2.2) and their wire types.
PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_IDENTIFIER = 0x0B
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTHENTICATION_METHOD = 0x15
AUTHENTICATION_DATA = 0x16
WILL_DELAY_INTERVAL = 0x18
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27

_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_U16 = {0x13, 0x21, 0x22, 0x23}
_U32 = {0x02, 0x11, 0x18, 0x27}
_VARINT = {0x0B}
_STRING = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BINARY = {0x09, 0x16}
_PAIR = {0x26}


# --------------------------------------------------------------------------- encoding


def varint(value: int) -> bytes:
    """MQTT variable byte integer (spec 1.5.5)."""
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def binary(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def encode_properties(props: dict | None) -> bytes:
    """Encode a property dict (USER_PROPERTY and SUBSCRIPTION_IDENTIFIER as lists)."""
    body = bytearray()
    for pid, value in (props or {}).items():
        values = value if pid in _PAIR or (pid in _VARINT and isinstance(value, list)) else [value]
        for item in values:
            body += varint(pid)
            if pid in _BYTE:
                body.append(item)
            elif pid in _U16:
                body += struct.pack("!H", item)
            elif pid in _U32:
                body += struct.pack("!I", item)
            elif pid in _VARINT:
                body += varint(item)
            elif pid in _STRING:
                body += utf8(item)
            elif pid in _BINARY:
                body += binary(item)
            elif pid in _PAIR:
                body += utf8(item[0]) + utf8(item[1])
            else:
                raise ValueError(f"unknown property {pid:#x}")
    return varint(len(body)) + bytes(body)


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect_packet(
    client_id: str,
    version: int = 4,
    clean: bool = True,
    keepalive: int = 60,
    properties: dict | None = None,
    will: dict | None = None,
    username: str | None = None,
    password: bytes | None = None,
) -> bytes:
    """CONNECT. ``will`` = {"topic", "payload", "qos", "retain", "properties"}."""
    flags = 0x02 if clean else 0
    payload = utf8(client_id)
    if will is not None:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
        if version == 5:
            payload += encode_properties(will.get("properties"))
        payload += utf8(will["topic"]) + binary(will["payload"])
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
    if password is not None:
        flags |= 0x40
        payload += binary(password)
    variable = utf8("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        variable += encode_properties(properties)
    return packet(0x10, variable + payload)


def publish_packet(
    topic: str,
    payload: bytes,
    qos: int = 0,
    packet_id: int | None = None,
    retain: bool = False,
    dup: bool = False,
    version: int = 4,
    properties: dict | None = None,
) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = utf8(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if version == 5:
        body += encode_properties(properties)
    return packet(first, body + payload)


def ack_packet(ptype: int, packet_id: int, version: int = 4, reason_code: int = 0) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP (PUBREL has the mandatory flags 0b0010)."""
    first = (ptype << 4) | (0x02 if ptype == PUBREL else 0)
    body = struct.pack("!H", packet_id)
    if version == 5 and reason_code:
        body += bytes([reason_code])
    return packet(first, body)


def subscribe_packet(
    packet_id: int,
    filters: list[tuple[str, int]],
    version: int = 4,
    properties: dict | None = None,
) -> bytes:
    """SUBSCRIBE; each filter comes with its raw options byte (QoS, and v5 option bits)."""
    body = struct.pack("!H", packet_id)
    if version == 5:
        body += encode_properties(properties)
    for topic_filter, options in filters:
        body += utf8(topic_filter) + bytes([options])
    return packet(0x82, body)


def unsubscribe_packet(packet_id: int, filters: list[str], version: int = 4) -> bytes:
    body = struct.pack("!H", packet_id)
    if version == 5:
        body += encode_properties({})
    for topic_filter in filters:
        body += utf8(topic_filter)
    return packet(0xA2, body)


def disconnect_packet(version: int = 4, reason_code: int = 0, properties: dict | None = None) -> bytes:
    if version == 5 and (reason_code or properties):
        return packet(0xE0, bytes([reason_code]) + encode_properties(properties))
    return packet(0xE0, b"")


def auth_packet(reason_code: int, properties: dict | None = None) -> bytes:
    return packet(0xF0, bytes([reason_code]) + encode_properties(properties))


PINGREQ_PACKET = b"\xc0\x00"


# --------------------------------------------------------------------------- decoding


@dataclass
class Packet:
    """A decoded server packet; fields unused by a type stay at their defaults."""

    type: int
    flags: int
    raw: bytes
    packet_id: int | None = None
    reason_code: int | None = None
    reason_codes: list[int] = field(default_factory=list)
    properties: dict = field(default_factory=dict)
    session_present: bool = False
    topic: str = ""
    payload: bytes = b""

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type {self.type}")

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 0x03

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 0x01)

    def __repr__(self) -> str:
        extra = f" topic={self.topic!r} qos={self.qos} dup={self.dup} retain={self.retain}" if self.type == PUBLISH else ""
        if self.type == CONNACK:
            extra = f" session_present={self.session_present}"
        return (
            f"<{self.name} id={self.packet_id} rc={self.reason_code} rcs={self.reason_codes}"
            f"{extra} props={self.properties} payload={self.payload[:40]!r}>"
        )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.left():
            raise ValueError("truncated packet")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("!I", self.take(4))[0]

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise ValueError("variable byte integer too long")

    def string(self) -> str:
        return self.take(self.u16()).decode("utf-8")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def properties(self) -> dict:
        end = self.varint() + self.pos
        props: dict = {}
        while self.pos < end:
            pid = self.varint()
            if pid in _BYTE:
                props[pid] = self.u8()
            elif pid in _U16:
                props[pid] = self.u16()
            elif pid in _U32:
                props[pid] = self.u32()
            elif pid in _VARINT:
                props.setdefault(pid, []).append(self.varint())
            elif pid in _STRING:
                props[pid] = self.string()
            elif pid in _BINARY:
                props[pid] = self.binary()
            elif pid in _PAIR:
                props.setdefault(pid, []).append((self.string(), self.string()))
            else:
                raise ValueError(f"unknown property {pid:#x}")
        return props


def decode(first_byte: int, body: bytes, version: int) -> Packet:
    """Decode one server-to-client packet body (fixed header already split off)."""
    ptype, flags = first_byte >> 4, first_byte & 0x0F
    pkt = Packet(ptype, flags, bytes([first_byte]) + varint(len(body)) + body)
    r = _Reader(body)
    v5 = version == 5
    if ptype == CONNACK:
        pkt.session_present = bool(r.u8() & 0x01)
        pkt.reason_code = r.u8()
        if v5 and r.left():
            pkt.properties = r.properties()
    elif ptype == PUBLISH:
        pkt.topic = r.string()
        if pkt.qos:
            pkt.packet_id = r.u16()
        if v5:
            pkt.properties = r.properties()
        pkt.payload = r.take(r.left())
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        pkt.packet_id = r.u16()
        pkt.reason_code = r.u8() if v5 and r.left() else 0
        if v5 and r.left():
            pkt.properties = r.properties()
    elif ptype in (SUBACK, UNSUBACK):
        pkt.packet_id = r.u16()
        if v5:
            pkt.properties = r.properties()
        pkt.reason_codes = list(r.take(r.left()))
    elif ptype in (DISCONNECT, AUTH):
        pkt.reason_code = r.u8() if r.left() else 0
        if r.left():
            pkt.properties = r.properties()
    return pkt


# --------------------------------------------------------------------------- the client


class ConnectionClosed(Exception):
    """The server closed the connection while a packet was expected."""


class RawClient:
    """A blocking socket speaking MQTT bytes; every wait has a deadline."""

    def __init__(self, host: str, port: int, version: int = 4, timeout: float = 5.0) -> None:
        self.version = version
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()
        self.backlog: list[Packet] = []  # packets set aside by expect(skip=...)
        self._eof = False
        self._next_id = 0

    # -- context manager -------------------------------------------------------
    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def next_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    # -- bytes -----------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False on timeout. Sets _eof on close or reset."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self._eof:
            return False
        ready, _, _ = select.select([self.sock], [], [], remaining)
        if not ready:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, OSError):
            chunk = b""
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def _split(self) -> tuple[int, bytes] | None:
        """Take one complete packet off the buffer, if there is one."""
        buf = self._buffer
        if len(buf) < 2:
            return None
        length, multiplier, pos = 0, 1, 1
        while True:
            if pos >= len(buf):
                return None
            byte = buf[pos]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            pos += 1
            if not byte & 0x80:
                break
        if len(buf) < pos + length:
            return None
        first, body = buf[0], bytes(buf[pos : pos + length])
        del buf[: pos + length]
        return first, body

    # -- packets ---------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> Packet | None:
        """The next packet, or None on timeout. Raises ConnectionClosed on EOF."""
        if self.backlog:
            return self.backlog.pop(0)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            split = self._split()
            if split is not None:
                return decode(split[0], split[1], self.version)
            if self._eof:
                raise ConnectionClosed("server closed the connection")
            if not self._fill(deadline) and not self._eof:
                return None

    def expect(self, ptype: int, timeout: float | None = None, skip: tuple[int, ...] = ()) -> Packet:
        """The next packet, which must be of ``ptype``.

        Packets of the types in ``skip`` that arrive first are set aside and
        returned, in order, by the following ``recv`` calls.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        set_aside = []
        try:
            while True:
                pkt = self.recv(max(0.0, deadline - time.monotonic()))
                if pkt is None:
                    raise AssertionError(f"timed out waiting for {TYPE_NAMES[ptype]}")
                if pkt.type in skip:
                    set_aside.append(pkt)
                    continue
                assert pkt.type == ptype, f"expected {TYPE_NAMES[ptype]}, got {pkt!r}"
                return pkt
        finally:
            self.backlog[:0] = set_aside

    def collect(self, duration: float) -> list[Packet]:
        """Every packet that arrives within ``duration`` seconds (stops at EOF)."""
        deadline = time.monotonic() + duration
        packets = []
        while True:
            try:
                pkt = self.recv(max(0.0, deadline - time.monotonic()))
            except ConnectionClosed:
                return packets
            if pkt is None:
                return packets
            packets.append(pkt)

    def wait_closed(self, timeout: float | None = None) -> list[Packet]:
        """Wait until the server closes the connection; returns the packets it sent first."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        packets = []
        while True:
            try:
                pkt = self.recv(max(0.0, deadline - time.monotonic()))
            except ConnectionClosed:
                return packets
            if pkt is None:
                raise AssertionError(f"server did not close the connection; it sent {packets}")
            packets.append(pkt)

    def is_open(self, probe_timeout: float = 2.0) -> bool:
        """Probe with PINGREQ: True if PINGRESP comes back."""
        try:
            self.send(PINGREQ_PACKET)
            self.expect(PINGRESP, probe_timeout, skip=(PUBLISH,))
            return True
        except (ConnectionClosed, OSError, AssertionError):
            return False

    # -- conversations -------------------------------------------------------------
    def connect(self, client_id: str, **kwargs: object) -> Packet:
        """Send CONNECT and return the CONNACK."""
        self.send(connect_packet(client_id, version=self.version, **kwargs))
        return self.expect(CONNACK)

    def publish(self, topic: str, payload: bytes, qos: int = 0, **kwargs: object) -> int | None:
        """Send PUBLISH and complete its QoS handshake as the sender; returns the packet id."""
        packet_id = kwargs.pop("packet_id", None) or (self.next_id() if qos else None)
        self.send(publish_packet(topic, payload, qos, packet_id, version=self.version, **kwargs))
        if qos == 1:
            assert self.expect(PUBACK, skip=(PUBLISH,)).packet_id == packet_id
        elif qos == 2:
            assert self.expect(PUBREC, skip=(PUBLISH,)).packet_id == packet_id
            self.send(ack_packet(PUBREL, packet_id, self.version))
            assert self.expect(PUBCOMP, skip=(PUBLISH,)).packet_id == packet_id
        return packet_id

    def subscribe(self, filters: list[tuple[str, int]], properties: dict | None = None) -> Packet:
        """Send SUBSCRIBE with (filter, options byte) pairs; returns the SUBACK."""
        packet_id = self.next_id()
        self.send(subscribe_packet(packet_id, filters, self.version, properties))
        suback = self.expect(SUBACK, skip=(PUBLISH,))
        assert suback.packet_id == packet_id
        return suback

    def ack(self, pkt: Packet) -> None:
        """Acknowledge a received PUBLISH as the receiver (QoS 2: PUBREC, then PUBREL/PUBCOMP)."""
        if pkt.qos == 1:
            self.send(ack_packet(PUBACK, pkt.packet_id, self.version))
        elif pkt.qos == 2:
            self.send(ack_packet(PUBREC, pkt.packet_id, self.version))
            rel = self.expect(PUBREL, skip=(PUBLISH,))  # later messages may come first
            assert rel.packet_id == pkt.packet_id
            self.send(ack_packet(PUBCOMP, pkt.packet_id, self.version))

    def disconnect(self, reason_code: int = 0, properties: dict | None = None) -> None:
        try:
            self.send(disconnect_packet(self.version, reason_code, properties))
        finally:
            self.close()
