"""The stored encoding of properties and id lists: exact round trips, deterministic
bytes, and damaged input refused with CorruptValue (never another error)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.protocol import properties as P
from broker.storage.serialization import (
    CorruptValue,
    decode_ints,
    decode_properties,
    encode_ints,
    encode_properties,
)

texts = st.text(max_size=20)  # any str without lone surrogates: what MQTT UTF-8 can carry
values = st.one_of(
    st.integers(min_value=0, max_value=2**64),
    texts,
    st.binary(max_size=40),
    st.lists(st.integers(min_value=0, max_value=268_435_455), min_size=1, max_size=5),
    st.lists(st.tuples(texts, texts), min_size=1, max_size=5),
)
property_dicts = st.dictionaries(st.integers(min_value=0, max_value=300), values, max_size=8)


@given(property_dicts)
def test_properties_round_trip(properties: dict) -> None:
    assert decode_properties(encode_properties(properties)) == properties


@given(property_dicts, st.randoms())
def test_encoding_does_not_depend_on_insertion_order(properties: dict, rnd) -> None:
    items = list(properties.items())
    rnd.shuffle(items)
    assert encode_properties(dict(items)) == encode_properties(properties)


@given(st.binary(max_size=64))
def test_damaged_blobs_decode_or_fail_cleanly(blob: bytes) -> None:
    try:
        result = decode_properties(blob)
    except CorruptValue:
        return
    # Whatever decodes is made of storable values only.
    assert decode_properties(encode_properties(result)) == result


@given(st.lists(st.integers(min_value=0, max_value=2**40), max_size=10))
def test_id_lists_round_trip(ids: list[int]) -> None:
    assert decode_ints(encode_ints(ids)) == ids


def test_empty_values_are_null() -> None:
    assert encode_properties({}) is None and encode_properties(None) is None
    assert decode_properties(None) == {} and decode_properties(b"") == {}
    assert encode_ints([]) is None and decode_ints(None) == []


def test_known_bytes_and_shapes() -> None:
    blob = encode_properties({
        P.USER_PROPERTY: [["k", "v"]],  # lists are accepted, tuples come back
        P.PAYLOAD_FORMAT_INDICATOR: True,  # bools are stored as the ints they are
        P.CORRELATION_DATA: bytearray(b"\x00\x80"),
    })
    assert blob == b"\x01\x01\x01" + b"\x09\x03\x02\x00\x80" + b"\x26\x05\x01\x01k\x01v"
    decoded = decode_properties(blob)
    assert decoded == {1: 1, 9: b"\x00\x80", 0x26: [("k", "v")]}
    assert type(decoded[1]) is int and type(decoded[9]) is bytes
    assert encode_ints([1, 128, 300]) == b"\x01\x80\x01\xac\x02"


@pytest.mark.parametrize(
    "bad, error",
    [
        ({P.CONTENT_TYPE: 1.5}, TypeError),
        ({P.CONTENT_TYPE: None}, TypeError),
        ({"3": "x"}, TypeError),
        ({P.MESSAGE_EXPIRY_INTERVAL: -1}, ValueError),
        ({P.USER_PROPERTY: [("a", "b", "c")]}, TypeError),
        ({P.USER_PROPERTY: [("a", 1)]}, TypeError),
        ({P.SUBSCRIPTION_IDENTIFIER: [1, "2"]}, TypeError),
        ({P.CONTENT_TYPE: "\ud800"}, UnicodeEncodeError),
    ],
)
def test_values_mqtt_cannot_carry_are_refused(bad: dict, error: type) -> None:
    with pytest.raises(error):
        encode_properties(bad)


@pytest.mark.parametrize(
    "blob",
    [
        b"\x03",  # key without tag
        b"\x03\x09",  # unknown tag
        b"\x03\x02\x05ab",  # string shorter than its length
        b"\x03\x02\x02\xff\xfe",  # not utf-8
        b"\x09\x02\x01a\x03\x02\x01b",  # keys out of order
        b"\x09\x02\x01a\x09\x02\x01b",  # key repeated
        b"\x02\x01" + b"\xff" * 11,  # endless integer
        b"\x26\x05\xff\xff\xff\x7f",  # a count far larger than the data
    ],
)
def test_damaged_blobs_are_refused(blob: bytes) -> None:
    with pytest.raises(CorruptValue):
        decode_properties(blob)


def test_damaged_id_list_is_refused() -> None:
    with pytest.raises(CorruptValue):
        decode_ints(b"\x80")
