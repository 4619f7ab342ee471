"""Issue 15 item 1: deep topic filters cost memory linear in their length, and depth is limited.

A node of the subscription trie used to hold its whole prefix, so a filter of n
levels cost n squared bytes (a 65 KB SUBSCRIBE: 1 GB), and a persistent session
brought it back at every start.
"""

from __future__ import annotations

import tracemalloc

from broker.core.subscriptions import SubscriptionTree
from broker.core.topic_limits import TopicLimits
from e2e.mqttraw import RawClient

from .helpers import rss_bytes


def test_a_deep_filter_costs_memory_linear_in_its_length() -> None:
    levels = 2000
    topic_filter = "/".join(f"level-{i:04d}-abcdefghijklmn" for i in range(levels))  # 52 KB
    tree: SubscriptionTree[int] = SubscriptionTree()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tree.add("c1", topic_filter, 1)
        tree.add("c2", "$share/g/" + topic_filter, 2)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A node and its dicts take well under 2 KB; a copy of every prefix would take 50 MB.
    assert used < levels * 2048, f"{used} bytes for {levels} levels"
    match = tree.match(topic_filter)
    assert match.normal == [("c1", 1)]
    assert [(g, f) for g, f, _ in match.shared] == [("g", topic_filter)]
    assert tree.remove("c2", "$share/g/" + topic_filter) and tree.remove("c1", topic_filter)
    assert not tree._root.children


LIMIT_TABLE = [
    # (max_levels, max_length, text, filter problem?, name problem?)
    (200, 65535, "/".join("a" * 200), False, False),
    (200, 65535, "/".join(["a"] * 201), True, True),
    (200, 65535, "$share/g/" + "/".join(["a"] * 200), False, None),  # the share prefix adds no level
    (200, 65535, "$share/g/" + "/".join(["a"] * 201), True, None),
    (0, 65535, "/".join(["a"] * 5000), False, False),
    (200, 10, "abcdefghij", False, False),
    (200, 10, "abcdefghijk", True, True),
    (200, 10, "é" * 5, False, False),  # 10 bytes of UTF-8
    (200, 10, "é" * 6, True, True),  # 12 bytes
    (200, 65535, "a/#/b", True, None),  # invalid stays invalid
    (200, 65535, "a/+", False, True),  # a wildcard is no topic name
]


def test_topic_limits_table() -> None:
    for max_levels, max_length, text, filter_bad, name_bad in LIMIT_TABLE:
        limits = TopicLimits(max_levels, max_length)
        assert (limits.filter_problem(text) is not None) is filter_bad, (max_levels, max_length, text[:40])
        if name_bad is not None:
            assert (limits.name_problem(text) is not None) is name_bad, (max_levels, max_length, text[:40])


def test_deep_subscribes_are_refused_and_cost_nothing(broker_factory, canary_factory) -> None:
    broker = broker_factory()
    canary = canary_factory(broker.port)
    deep = "/".join(["a"] * 20000)  # 40 KB, 20,000 levels: 400 MB of prefixes before the fix
    before = rss_bytes(broker.pid)
    with RawClient(broker.host, broker.port, version=5, timeout=30) as client:
        assert client.connect("deep", properties={0x11: 3600}).reason_code == 0
        for _ in range(3):
            suback = client.subscribe([(deep, 1), ("/".join(["b"] * 200), 1)])
            assert suback.reason_codes == [0x8F, 1], suback
        client.send(bytes.fromhex("c000"))
        client.expect(13)  # PINGRESP: the broker still answers
    grown = rss_bytes(broker.pid) - before
    canary.stop().check()
    assert grown < 30 * 1024 * 1024, f"RSS grew {grown / 1e6:.0f} MB"


def test_a_stored_subscription_beyond_the_limit_is_skipped_at_start(broker_factory, canary_factory) -> None:
    first = broker_factory(config="[limits]\nmax_topic_levels = 0\n")
    deep = "/".join(["d"] * 300)
    with RawClient(first.host, first.port, timeout=10) as client:
        assert client.connect("keeper", clean=False).reason_code == 0
        assert client.subscribe([(deep, 1), ("ok/topic", 1)]).reason_codes == [1, 1]
        client.disconnect()
    data_dir = first.data_dir
    first.stop()
    second = broker_factory(data_dir=data_dir)
    second.wait_for_log(r"skipping a stored subscription of keeper: topic filter has more than 200 levels")
    canary = canary_factory(second.port)
    with RawClient(second.host, second.port, timeout=10) as client:
        connack = client.connect("keeper", clean=False)
        assert connack.session_present
        with RawClient(second.host, second.port, timeout=10) as publisher:
            publisher.connect("pub")
            publisher.publish("ok/topic", b"still here", qos=1)
        message = client.expect(3)
        assert message.topic == "ok/topic" and message.payload == b"still here"
    canary.stop().check()
