"""Compact, deterministic encoding of v5 properties and id lists for storage.

Why not pickle or repr: a damaged or hostile database file must never be able
to run code or build arbitrary objects, only fail to decode. Why not JSON: bytes
values (correlation data) would need base64 and the result is twice as large
on the hot write path.

Format (all integers are unsigned LEB128 varints)::

    properties := { key tag value }*        keys strictly increasing
    tag 1 int   := varint
    tag 2 str   := length utf-8-bytes
    tag 3 bytes := length raw-bytes
    tag 4 ints  := count varint*            e.g. SUBSCRIPTION_IDENTIFIER
    tag 5 pairs := count (length utf-8, length utf-8)*   USER_PROPERTY

An empty property dict encodes as ``None`` (SQL NULL). Decoding returns
exactly the shapes the protocol layer uses: ``int``, ``str``, ``bytes``,
``list[int]`` and ``list[tuple[str, str]]``.
"""

from __future__ import annotations

_INT = 1
_STR = 2
_BYTES = 3
_INTS = 4
_PAIRS = 5

_MAX_VARINT_BYTES = 10  # 70 bits: far beyond any MQTT integer


class CorruptValue(ValueError):
    """A stored blob does not follow the format (damaged or foreign data)."""


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError(f"cannot store negative integer {value}")
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_text(out: bytearray, text: str) -> None:
    raw = text.encode("utf-8")
    _put_varint(out, len(raw))
    out += raw


def _is_int(value: object) -> bool:
    return isinstance(value, int)


def _is_pair(value: object) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], str)
    )


def encode_properties(properties: dict | None) -> bytes | None:
    """Encode a property dict; raises TypeError/ValueError for values MQTT cannot carry."""
    if not properties:
        return None
    out = bytearray()
    for key in sorted(properties):
        if not isinstance(key, int):
            raise TypeError(f"property key must be an int, not {key!r}")
        value = properties[key]
        _put_varint(out, key)
        if isinstance(value, int):
            out.append(_INT)
            _put_varint(out, int(value))
        elif isinstance(value, str):
            out.append(_STR)
            _put_text(out, value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            out.append(_BYTES)
            _put_varint(out, len(raw))
            out += raw
        elif isinstance(value, (list, tuple)):
            if all(map(_is_int, value)):
                out.append(_INTS)
                _put_varint(out, len(value))
                for item in value:
                    _put_varint(out, int(item))
            elif all(map(_is_pair, value)):
                out.append(_PAIRS)
                _put_varint(out, len(value))
                for name, text in value:
                    _put_text(out, name)
                    _put_text(out, text)
            else:
                raise TypeError(f"property {key:#x}: a list must hold ints or (str, str) pairs")
        else:
            raise TypeError(f"property {key:#x}: cannot store a {type(value).__name__}")
    return bytes(out)


class _Reader:
    """Bounds-checked cursor over a stored blob."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        data = self.data
        value = 0
        shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            if self.pos >= len(data):
                raise CorruptValue("truncated integer")
            byte = data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise CorruptValue("integer too long")

    def raw(self) -> bytes:
        length = self.varint()
        end = self.pos + length
        if end > len(self.data):
            raise CorruptValue("truncated string or binary value")
        chunk = self.data[self.pos : end]
        self.pos = end
        return bytes(chunk)

    def text(self) -> str:
        try:
            return self.raw().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptValue("invalid utf-8 in stored string") from exc

    def count(self) -> int:
        # Every item takes at least one byte: a larger count is corrupt (and
        # would otherwise let a hostile blob make us loop for a long time).
        n = self.varint()
        if n > len(self.data) - self.pos:
            raise CorruptValue("item count larger than the data")
        return n


def decode_properties(data: bytes | None) -> dict:
    """Decode what ``encode_properties`` wrote; raises CorruptValue on anything else."""
    if not data:
        return {}
    reader = _Reader(data)
    properties: dict = {}
    last_key = -1
    while not reader.at_end():
        key = reader.varint()
        if key <= last_key:
            raise CorruptValue("property keys out of order")
        last_key = key
        if reader.at_end():
            raise CorruptValue("missing property tag")
        tag = reader.data[reader.pos]
        reader.pos += 1
        if tag == _INT:
            properties[key] = reader.varint()
        elif tag == _STR:
            properties[key] = reader.text()
        elif tag == _BYTES:
            properties[key] = reader.raw()
        elif tag == _INTS:
            properties[key] = [reader.varint() for _ in range(reader.count())]
        elif tag == _PAIRS:
            properties[key] = [(reader.text(), reader.text()) for _ in range(reader.count())]
        else:
            raise CorruptValue(f"unknown property tag {tag}")
    return properties


def encode_ints(values: list[int] | tuple[int, ...]) -> bytes | None:
    """Encode a list of non-negative ints (subscription identifiers); empty -> None."""
    if not values:
        return None
    out = bytearray()
    for value in values:
        _put_varint(out, value)
    return bytes(out)


def decode_ints(data: bytes | None) -> list[int]:
    if not data:
        return []
    reader = _Reader(data)
    values = []
    while not reader.at_end():
        values.append(reader.varint())
    return values
