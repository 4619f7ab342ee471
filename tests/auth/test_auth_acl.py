"""The ACL file: mosquitto's syntax, errors with file and line, and the topic algebra (brute-force oracle)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.auth.acl import (
    READ,
    WRITE,
    AclFileError,
    filter_covers,
    filters_intersect,
    may_access,
    may_subscribe,
    parse_acl,
)
from broker.protocol.topics import topic_matches

SAMPLE = """\
# anonymous clients
topic read public/#
topic   $SYS/broker/load/#

user alice
topic readwrite home/#
topic deny home/secret/#
topic write with space/topic

user bob smith
topic read home/+/temperature

pattern read devices/%c/cmd
pattern write devices/%c/state
pattern deny users/%u/private
"""


def acl_from(tmp_path: Path, text: str) -> str:
    path = tmp_path / "acl"
    path.write_text(text)
    return str(path)


def test_sample_parses_like_mosquitto(tmp_path: Path) -> None:
    acl = parse_acl(acl_from(tmp_path, SAMPLE))
    assert [(r.access, r.topic_filter) for r in acl.anonymous] == [(READ, "public/#"), (READ | WRITE, "$SYS/broker/load/#")]
    assert list(acl.users) == ["alice", "bob smith"]
    assert (WRITE, "with space/topic") in [(r.access, r.topic_filter) for r in acl.users["alice"]]
    assert len(acl.patterns) == 3 and len(acl) == 9


def test_rules_for_users_anonymous_and_patterns(tmp_path: Path) -> None:
    acl = parse_acl(acl_from(tmp_path, SAMPLE))
    alice = acl.rules_for("alice", "phone")
    assert may_access(alice, READ, "home/kitchen") and may_access(alice, WRITE, "home/kitchen")
    assert not may_access(alice, READ, "home/secret/pin")
    assert not may_access(alice, READ, "public/news")  # anonymous rules are for anonymous clients only
    assert may_access(alice, READ, "devices/phone/cmd") and not may_access(alice, READ, "devices/phone/state")
    assert may_access(alice, WRITE, "devices/phone/state")
    anonymous = acl.rules_for(None, "x")
    assert may_access(anonymous, READ, "public/a") and not may_access(anonymous, WRITE, "public/a")
    assert may_access(anonymous, READ, "$SYS/broker/load/1min")
    bob = acl.rules_for("bob smith", "b")
    assert may_access(bob, READ, "home/x/temperature") and not may_access(bob, READ, "home/x/humidity")


@pytest.mark.parametrize("identity", [("a/b", "ok"), ("a+", "ok"), ("#", "ok"), ("", "ok"), ("ok", "x/y"), ("ok", "")])
def test_unsafe_substitution_denies_through_deny_patterns(tmp_path: Path, identity: tuple[str, str]) -> None:
    """A deny pattern that cannot be filled in safely denies everything (fail closed)."""
    acl = parse_acl(acl_from(tmp_path, "topic read #\nuser u\ntopic read #\npattern deny x/%u/%c\n"))
    user, client = identity
    rules = acl.rules_for(user if user != "" else "", client)
    assert rules.deny_all
    assert not may_access(rules, READ, "anything")


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("topic read a\nbogus read b\n", 2, "unknown keyword 'bogus'"),
        ("user\n", 1, "'user' needs a user name"),
        ("\n\ntopic read\n", 3, "'topic' needs a topic filter"),
        ("topic read a/#/b\n", 1, "'a/#/b' is not a valid topic filter"),
        ("user x\npattern write dev/%c+/x\n", 2, "is not a valid topic filter"),
        ("topic read $share/g/a\n", 1, "$share"),
        ("# ok\ntopic read a\ntopic read sport+\n", 3, "not a valid topic filter"),
    ],
)
def test_parse_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = acl_from(tmp_path, text)
    with pytest.raises(AclFileError) as error:
        parse_acl(path)
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert message in str(error.value)


# ---- the algebra against brute force --------------------------------------------------

FILTER_LEVELS = ["a", "b", "$s", "+", "#", ""]
TOPIC_LEVELS = ["a", "b", "c", "$s", ""]
TOPICS = ["/".join(levels) for n in range(1, 5) for levels in itertools.product(TOPIC_LEVELS, repeat=n)]


def valid_filter(levels: list[str]) -> bool:
    return "#" not in levels[:-1]


filters = st.lists(st.sampled_from(FILTER_LEVELS), min_size=1, max_size=3).filter(valid_filter).map("/".join)


@settings(max_examples=400, deadline=None)
@given(filters, filters)
def test_intersection_matches_brute_force(a: str, b: str) -> None:
    expected = any(topic_matches(a, t) and topic_matches(b, t) for t in TOPICS)
    assert filters_intersect(a, b) is expected
    assert filters_intersect(b, a) is expected


@settings(max_examples=400, deadline=None)
@given(filters, filters)
def test_cover_matches_brute_force(outer: str, inner: str) -> None:
    expected = all(topic_matches(outer, t) for t in TOPICS if topic_matches(inner, t))
    if not any(topic_matches(inner, t) for t in TOPICS):
        return  # an empty inner filter cannot occur for valid filters
    assert filter_covers(outer, inner) is expected


def test_subscribe_decisions(tmp_path: Path) -> None:
    acl = parse_acl(acl_from(tmp_path, "user u\ntopic read a/#\ntopic deny a/secret/#\ntopic write w\n"))
    rules = acl.rules_for("u", "c")
    assert may_subscribe(rules, "#") and may_subscribe(rules, "+/x") and may_subscribe(rules, "a")
    assert not may_subscribe(rules, "a/secret/+") and not may_subscribe(rules, "w") and not may_subscribe(rules, "$SYS/#")


def test_the_gateway_example_acl_parses_and_means_what_it_says() -> None:
    path = Path(__file__).resolve().parents[2] / "config" / "gateway-pi.acl"
    acl = parse_acl(str(path))
    sensor = acl.rules_for("sensor-01", "sensor-01")
    assert may_access(sensor, WRITE, "site/sensor-01/state/temp") and may_access(sensor, READ, "site/sensor-01/cmd/led")
    assert not may_access(sensor, READ, "site/sensor-02/cmd/led")
    assert may_subscribe(sensor, "site/#")  # overlaps its own commands: granted, delivery filters
    assert not may_subscribe(sensor, "site/sensor-02/cmd/#")
    dashboard = acl.rules_for("dashboard", "dashboard-ui")
    assert may_subscribe(dashboard, "site/#") and may_access(dashboard, WRITE, "site/sensor-01/cmd/led")
    assert not may_access(dashboard, WRITE, "site/sensor-01/state/temp")
