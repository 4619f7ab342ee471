"""Shared machinery for the table-driven codec tests (in the style of Mochi MQTT's packet tables).

A case is a name, hand-written wire bytes, the protocol version the connection
is at, and either the packet those bytes must decode to or the error they must
raise (class and reason code). Every case is checked three ways: fed whole to a
PacketReader, fed one byte at a time, and (valid cases) through decode_packet;
valid cases marked canonical must also come out of the encoder byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from broker.protocol.codec import PacketReader, decode_packet, encode
from broker.protocol.errors import MQTTError

SERVER_BOUND = "server"  # the reader sits in the broker and reads what a client sends
CLIENT_BOUND = "client"  # the reader sits in a client (bridge, test) and reads what a server sends


def h(text: str) -> bytes:
    """Hex with free spacing: h("10 0c 00 04") -> b"\\x10\\x0c\\x00\\x04"."""
    return bytes.fromhex(text)


@dataclass(frozen=True)
class Err:
    cls: type[MQTTError]
    reason: int


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    version: int | None  # None: fresh server-side connection, the CONNECT is still to come
    expect: object  # a packet, or Err
    side: str = SERVER_BOUND
    canonical: bool = True  # encode(expect, version) must reproduce raw exactly

    def __str__(self) -> str:
        return self.name


def make_reader(case: Case) -> PacketReader:
    if case.side == CLIENT_BOUND:
        return PacketReader(client_side=True, version=case.version)
    reader = PacketReader()
    reader.version = case.version
    return reader


def split_fixed_header(raw: bytes) -> tuple[int, bytes]:
    """First byte and body of one complete packet (the test's own tiny header parser)."""
    i = 1
    while raw[i] & 0x80:
        i += 1
    return raw[0], raw[i + 1 :]


def declared_length(raw: bytes) -> int | None:
    """The Remaining Length a fixture declares, or None if its header is not a valid one."""
    value = 0
    for i in range(1, min(len(raw), 5)):
        value |= (raw[i] & 0x7F) << (7 * (i - 1))
        if not raw[i] & 0x80:
            return value
    return None


def check_case(case: Case) -> None:
    # A fixture whose length byte is off by one could fail for the wrong reason
    # (or pass, with the leftover bytes read as the next packet): rule it out.
    declared = declared_length(case.raw)
    if declared is not None:
        assert declared == len(split_fixed_header(case.raw)[1]), f"{case.name}: fixture length is wrong"
    if isinstance(case.expect, Err):
        _check_error(case)
    else:
        _check_packet(case)


def _check_error(case: Case) -> None:
    expected = case.expect
    assert isinstance(expected, Err)
    with pytest.raises(MQTTError) as info:
        make_reader(case).feed(case.raw)
    assert type(info.value) is expected.cls, f"{case.name}: {info.value!r}"
    assert info.value.reason_code == expected.reason, f"{case.name}: {info.value!r}"
    assert info.value.packets_before == [], f"{case.name}: {info.value.packets_before!r}"
    # Byte by byte the same error must come, and no packet before it.
    reader = make_reader(case)
    with pytest.raises(MQTTError) as info:
        for i in range(len(case.raw)):
            early = reader.feed(case.raw[i : i + 1])
            assert early == [], f"{case.name}: byte by byte decoded {early!r}"
    assert type(info.value) is expected.cls, f"{case.name} (byte by byte): {info.value!r}"
    assert info.value.reason_code == expected.reason, f"{case.name} (byte by byte): {info.value!r}"


def _check_packet(case: Case) -> None:
    # This module is not rewritten by pytest, hence the explicit messages.
    want = [case.expect]
    got = make_reader(case).feed(case.raw)
    assert got == want, f"{case.name}: fed whole\n got  {got!r}\n want {want!r}"
    reader = make_reader(case)
    got = []
    for i in range(len(case.raw)):
        got += reader.feed(case.raw[i : i + 1])
    assert got == want, f"{case.name}: byte by byte\n got  {got!r}\n want {want!r}"
    first, body = split_fixed_header(case.raw)
    from_client = case.side == SERVER_BOUND
    for buffer in (body, memoryview(body)):
        got_one = decode_packet(first, buffer, case.version, from_client=from_client)
        assert got_one == case.expect, f"{case.name}: decode_packet\n got  {got_one!r}\n want {case.expect!r}"
    if case.canonical:
        version = case.version if case.version is not None else case.expect.protocol_level
        encoded = encode(case.expect, version)
        assert encoded == case.raw, f"{case.name}: encode\n got  {encoded.hex(' ')}\n want {case.raw.hex(' ')}"
