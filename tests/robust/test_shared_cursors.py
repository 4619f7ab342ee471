"""Issue 15 item 6: a shared group's round-robin cursor is removed with the group's last member.

``Engine._share_cursor`` was never pruned: subscribe/publish/unsubscribe cycles
with 20 KB group names kept 58 MB after the client left.
"""

from __future__ import annotations

from bench.robustness import PINGREQ, Client, connect, publish, subscribe, unsubscribe
from broker.core.subscriptions import SubscriptionTree

from .helpers import rss_bytes


def test_has_subscribers_follows_the_last_member() -> None:
    tree: SubscriptionTree[int] = SubscriptionTree()
    tree.add("c1", "$share/g/a/b", 1)
    tree.add("c2", "$share/g/a/b", 2)
    tree.add("c3", "a/b", 3)
    assert tree.has_subscribers("$share/g/a/b") and tree.has_subscribers("a/b")
    assert not tree.has_subscribers("$share/h/a/b") and not tree.has_subscribers("a/c")
    tree.remove("c1", "$share/g/a/b")
    assert tree.has_subscribers("$share/g/a/b")
    tree.remove("c2", "$share/g/a/b")
    assert not tree.has_subscribers("$share/g/a/b") and tree.has_subscribers("a/b")


def test_group_state_goes_with_its_last_member(broker_factory, canary_factory) -> None:
    broker = broker_factory()
    canary = canary_factory(broker.port)
    client = Client(broker.port, timeout=60)
    client.send(connect("sharer"))
    client.expect(2)
    before = rss_bytes(broker.pid)
    for batch in range(10):
        data = b""
        for i in range(100):
            group = f"g{batch}-{i}-" + "x" * 20000
            data += subscribe(1, [f"$share/{group}/jobs"], 0) + publish("jobs", b"1") + unsubscribe(2, [f"$share/{group}/jobs"])
        client.send(data + PINGREQ)
        client.expect(13)
    client.close()
    broker.wait_for_log("Client sharer disconnected")
    grown = rss_bytes(broker.pid) - before
    canary.stop().check()
    # 1,000 cursors keyed by 20 KB group names: 20 MB before the fix.
    assert grown < 8 << 20, f"RSS grew {grown / 1e6:.0f} MB"
