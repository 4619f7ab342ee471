"""Issue 15 item 5: the topic-match cache is bounded by bytes, not only by entries.

10,000 entries of 64 KB topic names each were 646 MB; now the cache holds at
most ``CACHE_BYTES`` and never a name long enough to push out hundreds of others.
"""

from __future__ import annotations

import tracemalloc

from broker.core import subscriptions
from broker.core.subscriptions import SubscriptionTree
from e2e.mqttraw import RawClient, publish_packet

from .helpers import rss_bytes


def test_long_topic_names_do_not_fill_the_cache() -> None:
    tree: SubscriptionTree[int] = SubscriptionTree()
    tree.add("c", "#", 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            assert tree.match(f"{i}/" + "x" * 8000).normal == [("c", 1)]  # 8 KB names: 16 MB in all
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert tree.cache_bytes <= subscriptions.CACHE_BYTES
    assert held < subscriptions.CACHE_BYTES * 1.5, f"the cache holds {held / 1e6:.1f} MB"


def test_the_byte_count_follows_evictions_and_changes() -> None:
    tree: SubscriptionTree[int] = SubscriptionTree()
    tree.add("c", "#", 1)
    for i in range(5000):
        tree.match(f"t/{i}/" + "y" * 1000)
    assert 0 < tree.cache_bytes <= subscriptions.CACHE_BYTES
    assert len(tree._cache) < 5000  # evicted by bytes, before the entry limit
    expected = sum(subscriptions._entry_bytes(topic, match) for topic, match in tree._cache.items())
    assert tree.cache_bytes == expected
    tree.add("d", "t/#", 2)
    assert tree.cache_bytes == 0 and not tree._cache


def test_publishing_to_many_long_topics_keeps_memory_flat(broker_factory, canary_factory) -> None:
    broker = broker_factory()
    canary = canary_factory(broker.port)
    with RawClient(broker.host, broker.port, timeout=60) as watcher:
        watcher.connect("watcher")
        watcher.subscribe([("big/#", 0)])
        with RawClient(broker.host, broker.port, timeout=60) as publisher:
            publisher.connect("spray")
            before = rss_bytes(broker.pid)
            for batch in range(10):
                publisher.send(b"".join(publish_packet(f"big/{batch}/{i}/" + "z" * 30000, b"1") for i in range(200)))
                assert publisher.is_open(30)
            grown = rss_bytes(broker.pid) - before
    canary.stop().check()
    # 2,000 names of 30 KB: 60 MB if the cache kept them.
    assert grown < 25 * 1024 * 1024, f"RSS grew {grown / 1e6:.0f} MB"
