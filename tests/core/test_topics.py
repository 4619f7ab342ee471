"""Topic name/filter validity and matching, from the examples of MQTT 3.1.1 s4.7 and MQTT 5 s4.7-4.8."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.protocol.topics import (
    is_valid_topic_filter,
    is_valid_topic_name,
    split_shared,
    topic_matches,
)

VALID_NAMES = [
    "sport/tennis/player1",
    "sport",
    "/",  # two empty levels
    "/finance",
    "sport/",
    "$SYS/broker/uptime",
    "$share/not/special/as/a/name",
    "a//b",
    " ",  # spaces are allowed
    "ü/Ελληνικά/😀",
    "x" * 65535,
    "é" * 32767,  # 65534 bytes
]

INVALID_NAMES = [
    "",
    "sport/+",
    "sport/#",
    "+",
    "#",
    "sport/tennis#",
    "a\x00b",
    "x" * 65536,
    "é" * 32768,  # 65536 bytes
    "😀" * 16384,  # 65536 bytes, 16384 code points
]

VALID_FILTERS = [
    "sport/tennis/player1/#",
    "sport/#",
    "#",
    "+",
    "+/tennis/#",
    "sport/+/player1",
    "+/+",
    "/+",
    "sport/+",
    "/",
    "a//b",
    "+/",
    "$SYS/#",
    "$SYS/+/x",
    "$share/consumer1/sport/tennis/+",
    "$share/consumer2/sport/tennis/+",
    "$share/g/#",
    "$share/g/+",
    "$share/g/a",
    "$share/g/$SYS/#",
    "$share/g//",  # filter "/" is valid
    "$share",  # not shared: an ordinary one-level filter
    "$sharex/g/a",
    "x" * 65535,
]

INVALID_FILTERS = [
    "",
    "sport/tennis#",
    "sport/tennis/#/ranking",
    "sport+",
    "sp+ort/a",
    "##",
    "#/",
    "#/a",
    "a/#/",
    "++",
    "a/+b",
    "a\x00b",
    "x" * 65536,
    "$share/",  # no group
    "$share//a",  # empty group
    "$share/g",  # no filter
    "$share/g/",  # empty filter
    "$share/g+/a",
    "$share/+/a",
    "$share/#/a",
    "$share/g#/a",
    "$share/g/a/#/b",
    "$share/g/a+",
    "$share/g\x00/a",  # U+0000 is not allowed anywhere, the share name included
    "$share/" + "g" * 65530 + "/a",  # over 65535 bytes in total
]


@pytest.mark.parametrize("name", VALID_NAMES, ids=repr)
def test_valid_topic_names(name: str) -> None:
    assert is_valid_topic_name(name)


@pytest.mark.parametrize("name", INVALID_NAMES, ids=lambda n: repr(n[:30]))
def test_invalid_topic_names(name: str) -> None:
    assert not is_valid_topic_name(name)


@pytest.mark.parametrize("topic_filter", VALID_FILTERS, ids=lambda n: repr(n[:30]))
def test_valid_topic_filters(topic_filter: str) -> None:
    assert is_valid_topic_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", INVALID_FILTERS, ids=lambda n: repr(n[:30]))
def test_invalid_topic_filters(topic_filter: str) -> None:
    assert not is_valid_topic_filter(topic_filter)


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/consumer1/sport/tennis/+", ("consumer1", "sport/tennis/+")),
        ("$share/g/#", ("g", "#")),
        ("a/b", (None, "a/b")),
        ("$share", (None, "$share")),
        ("$SYS/#", (None, "$SYS/#")),
        ("$share/g", (None, "$share/g")),  # malformed: left as is
    ],
)
def test_split_shared(topic_filter: str, expected: tuple[str | None, str]) -> None:
    assert split_shared(topic_filter) == expected


MATCHES = [
    # MQTT 3.1.1 s4.7.1.2 / MQTT 5 s4.7.1.2: multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("sport/#", "sport/", True),
    ("sport/#", "sports", False),
    ("sport/#", "sport2/x", False),
    ("#", "sport/tennis", True),
    ("#", "/", True),
    ("#", "a", True),
    # s4.7.1.3: single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("+", "", True),
    ("+/tennis/#", "sport/tennis", True),
    ("+/tennis/#", "sport/tennis/player1/x", True),
    ("+/tennis/#", "sport/golf", False),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("sport/+/player1", "sport/tennis/player2", False),
    ("+/+/#", "a", False),
    ("+/+/#", "a/b", True),
    ("+/#", "a", True),
    # exact and case-sensitive
    ("ACCOUNTS", "accounts", False),
    ("Accounts payable", "Accounts payable", True),
    ("a/b", "a/b", True),
    ("a/b", "a/b/", False),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("/", "/", True),
    ("/", "", False),
    # s4.7.2: $-topics are not matched by a leading wildcard
    ("#", "$SYS/broker/clients", False),
    ("#", "$SYS", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/Clients", "$SYS/monitor/Clients", True),
    ("a/#", "a/$b", True),  # '$' only matters in the first level
    ("a/+", "a/$b", True),
    ("$+", "$x", False),  # '+' inside a level is no wildcard: invalid filter, no match
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCHES)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


# ---- properties -------------------------------------------------------------

_levels = st.sampled_from(["a", "b", "", "$x", "é"])
_topics = st.lists(_levels, min_size=1, max_size=5).map("/".join)


@given(_topics)
def test_a_name_matches_itself_and_hash(topic: str) -> None:
    assert is_valid_topic_name(topic) or topic == ""
    assert topic_matches(topic, topic)
    assert topic_matches("#", topic) is (not topic.startswith("$"))
    # every level replaced by '+' matches, unless the first level is a $-level
    plus = "/".join("+" for _ in topic.split("/"))
    assert topic_matches(plus, topic) is (not topic.startswith("$"))


@given(_topics, st.integers(min_value=1, max_value=5))
def test_prefix_hash_matches_deeper_topics(topic: str, keep: int) -> None:
    levels = topic.split("/")
    prefix = "/".join(levels[:keep])
    assert topic_matches(prefix + "/#", topic)  # '#' also matches the parent level
    # a different first level never matches
    assert not topic_matches("/".join(["z", *levels[1:keep]]) + "/#", topic)
    # a filter with more levels than the topic (and no '#') never matches
    assert not topic_matches(topic + "/+", topic)


_filter_texts = st.text(alphabet="ab/+#$\x00", max_size=12)


@given(st.one_of(_filter_texts, _filter_texts.map(lambda text: "$share/" + text)))
def test_filter_validity_against_a_level_by_level_definition(text: str) -> None:
    levels = text.split("/")
    expected = (
        text != ""
        and "\x00" not in text
        and all(
            level in ("+", "#") or ("+" not in level and "#" not in level) for level in levels
        )
        and all(level != "#" for level in levels[:-1])
    )
    if text.startswith("$share/"):
        group, sep, inner = text[len("$share/") :].partition("/")
        inner_levels = inner.split("/")
        expected = (
            bool(sep and group and inner)
            and not set(group) & {"+", "#", "\x00"}
            and "\x00" not in inner
            and all(
                level in ("+", "#") or ("+" not in level and "#" not in level)
                for level in inner_levels
            )
            and all(level != "#" for level in inner_levels[:-1])
        )
    assert is_valid_topic_filter(text) is expected
