"""Issue 15 item 4: retained messages are found through a topic trie, so a wildcard costs what it matches.

Before, every wildcard filter in a SUBSCRIBE tested every retained topic: 1,000
filters that match nothing over 10,000 retained messages stalled the loop 2.9 s.
"""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.retained import RetainedStore
from broker.protocol.topics import is_valid_topic_filter, topic_matches
from broker.storage.base import StoredMessage
from e2e.mqttraw import RawClient, publish_packet, subscribe_packet

LEVELS = st.sampled_from(["a", "b", "", "$s", "c d", "é"])
TOPICS = st.lists(LEVELS, min_size=1, max_size=4).map("/".join).filter(lambda t: t != "")
FILTER_LEVELS = st.sampled_from(["a", "b", "", "$s", "+", "#", "é"])
FILTERS = st.lists(FILTER_LEVELS, min_size=1, max_size=5).map("/".join).filter(is_valid_topic_filter)


def message(topic: str, expires_at: float | None = None) -> StoredMessage:
    return StoredMessage(topic, b"x", 0, True, {}, expires_at)


@settings(max_examples=400, deadline=None)
@given(st.lists(TOPICS, max_size=12), st.lists(TOPICS, max_size=6), FILTERS)
def test_matching_agrees_with_the_brute_force_rule(topics, cleared, topic_filter) -> None:
    store = RetainedStore()
    for topic in topics:
        store.set(message(topic))
    for topic in cleared:
        store.clear(topic)
    alive = set(topics) - set(cleared)
    assert len(store) == len(alive)
    found = [m.topic for m in store.matching(topic_filter, lambda t: None)]
    assert sorted(found) == sorted(t for t in alive if topic_matches(topic_filter, t))
    for topic in alive:  # clearing everything leaves an empty trie
        assert store.clear(topic)
    assert not store._root.children


def test_expired_messages_are_dropped_and_reported() -> None:
    store = RetainedStore()
    store.set(message("a/old", time.time() - 1))
    store.set(message("a/new", time.time() + 60))
    expired: list[str] = []
    assert [m.topic for m in store.matching("a/+", expired.append)] == ["a/new"]
    assert expired == ["a/old"] and len(store) == 1


def test_wildcards_that_match_nothing_do_not_stall_the_broker(broker_factory, canary_factory) -> None:
    broker = broker_factory()
    retained = 5000
    with RawClient(broker.host, broker.port, timeout=60) as publisher:
        publisher.connect("retainer")
        publisher.send(b"".join(publish_packet(f"site/{i % 50}/dev{i}/temp", b"21", retain=True) for i in range(retained)))
        assert publisher.is_open(30)
    canary = canary_factory(broker.port)
    with RawClient(broker.host, broker.port, timeout=60) as subscriber:
        subscriber.connect("scanner")
        filters = [(f"site/+/nothing{i}/#", 0) for i in range(1000)]
        for batch in range(3):
            subscriber.send(subscribe_packet(batch + 1, filters))
            assert subscriber.expect(9, timeout=60).packet_id == batch + 1
        # One that matches: 100 messages under site/7.
        suback = subscriber.subscribe([("site/7/+/temp", 0)])
        assert suback.reason_codes == [0]
        got = subscriber.collect(1.0)
    canary.stop().check()
    assert len([p for p in got if p.type == 3 and p.retain]) == retained // 50
