"""MQTT data representations (spec 1.5): integers, variable byte integers, strings, binary data.

Readers take a buffer (``bytes`` or ``memoryview``), a position and the end of
the region they may read (a packet body or a property block), and return the
value with the new position. Anything that does not fit is a MalformedPacket,
so a length prefix can never read past its enclosing structure.
Writers return ``bytes``.
"""

from __future__ import annotations

from struct import Struct

from .errors import MalformedPacket

VARINT_MAX = 268_435_455  # largest value four variable-byte-integer bytes can hold

_U16 = Struct(">H")
_U32 = Struct(">I")
pack_u16 = _U16.pack
pack_u32 = _U32.pack

# One- and two-byte encodings cover every property block and nearly every packet;
# precomputing them keeps the encoder's hot path free of loops.
_VARINT_1 = tuple(bytes((i,)) for i in range(128))


def encode_varint(value: int) -> bytes:
    """Variable Byte Integer (1.5.5), minimal length as [MQTT-1.5.5-1] requires."""
    if value < 128:
        if value < 0:
            raise ValueError(f"variable byte integer must not be negative: {value}")
        return _VARINT_1[value]
    if value < 16384:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value > VARINT_MAX:
        raise ValueError(f"variable byte integer too large: {value}")
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def read_varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """Decode a Variable Byte Integer of at most four bytes within ``buf[pos:end]``."""
    value = 0
    shift = 0
    for i in range(pos, pos + 4):
        if i >= end:
            raise MalformedPacket("variable byte integer runs past its field")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than four bytes")


def read_u16(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """Two Byte Integer, big-endian."""
    stop = pos + 2
    if stop > end:
        raise MalformedPacket("two byte integer runs past its field")
    return (buf[pos] << 8) | buf[pos + 1], stop


def read_u32(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """Four Byte Integer, big-endian."""
    stop = pos + 4
    if stop > end:
        raise MalformedPacket("four byte integer runs past its field")
    return int.from_bytes(buf[pos:stop], "big"), stop


def read_binary(buf: bytes | memoryview, pos: int, end: int) -> tuple[bytes, int]:
    """Binary Data: two-byte length then that many bytes (copied out of the buffer)."""
    if pos + 2 > end:
        raise MalformedPacket("binary data length runs past its field")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("binary data runs past its field")
    return bytes(buf[pos + 2 : stop]), stop


def read_str(buf: bytes | memoryview, pos: int, end: int) -> tuple[str, int]:
    """UTF-8 Encoded String (1.5.4): well-formed UTF-8 without U+0000, else malformed.

    Python's strict UTF-8 decoder already rejects surrogates (U+D800..U+DFFF),
    overlong forms and code points past U+10FFFF, as [MQTT-1.5.4-1] demands.
    """
    if pos + 2 > end:
        raise MalformedPacket("string length runs past its field")
    start = pos + 2
    stop = start + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("string runs past its field")
    try:
        text = str(buf[start:stop], "utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"string is not valid UTF-8: {exc.reason}") from None
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000 [MQTT-1.5.4-2]")
    return text, stop


def encode_str(text: str) -> bytes:
    """UTF-8 Encoded String with its two-byte length prefix."""
    raw = text.encode("utf-8")
    if len(raw) > 65535:
        raise ValueError("string longer than 65535 bytes")
    return _U16.pack(len(raw)) + raw


def encode_binary(data: bytes) -> bytes:
    """Binary Data with its two-byte length prefix."""
    if len(data) > 65535:
        raise ValueError("binary data longer than 65535 bytes")
    return _U16.pack(len(data)) + bytes(data)
