"""The subscription trie: matching (against a brute-force oracle), shared groups, removal, caching."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core import subscriptions
from broker.core.subscriptions import Match, SubscriptionTree
from broker.protocol.topics import is_valid_topic_filter, split_shared, topic_matches


def normal_set(match: Match) -> set[tuple[str, object]]:
    return set(match.normal)


def shared_view(match: Match) -> dict[tuple[str, str], dict[str, object]]:
    return {(group, topic_filter): members for group, topic_filter, members in match.shared}


def node_count(tree: SubscriptionTree) -> int:
    """Nodes below the root: lets tests see that removal prunes."""
    stack = list(tree._root.children.values())
    count = 0
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node.children.values())
    return count


def test_empty_tree_matches_nothing() -> None:
    tree = SubscriptionTree()
    match = tree.match("a/b")
    assert match.normal == [] and match.shared == []
    assert not match
    assert len(tree) == 0


def test_add_reports_new_or_replaced_and_counts() -> None:
    tree = SubscriptionTree()
    assert tree.add("c1", "a/b", 1) is True
    assert tree.add("c1", "a/b", 2) is False  # same client, same filter: replaced
    assert tree.add("c2", "a/b", 3) is True
    assert tree.add("c1", "a/+", 4) is True
    assert tree.add("c1", "$share/g/a/b", 5) is True
    assert tree.add("c1", "$share/g/a/b", 6) is False
    assert tree.add("c1", "$share/h/a/b", 7) is True
    assert len(tree) == 5
    match = tree.match("a/b")
    assert sorted(match.normal, key=repr) == sorted([("c1", 2), ("c2", 3), ("c1", 4)], key=repr)
    assert shared_view(match) == {("g", "a/b"): {"c1": 6}, ("h", "a/b"): {"c1": 7}}


def test_a_client_appears_once_per_matching_filter() -> None:
    tree = SubscriptionTree()
    for topic_filter in ("a/b", "a/+", "+/b", "#", "a/#", "+/+"):
        tree.add("c1", topic_filter, topic_filter)
    match = tree.match("a/b")
    assert sorted(match.normal) == sorted(
        ("c1", f) for f in ("a/b", "a/+", "+/b", "#", "a/#", "+/+")
    )


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sport/#", "sport", True),
        ("sport/#", "sport/tennis/player1", True),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("+", "$SYS", False),
        ("$SYS/#", "$SYS", True),
        ("$SYS/+", "$SYS/uptime", True),
        ("a/#", "a/$b", True),
        ("a/+", "a/$b", True),
    ],
)
def test_spec_examples(topic_filter: str, topic: str, expected: bool) -> None:
    tree = SubscriptionTree()
    tree.add("c", topic_filter, "v")
    assert (tree.match(topic).normal == [("c", "v")]) is expected
    shared = SubscriptionTree()
    shared.add("c", f"$share/g/{topic_filter}", "v")
    assert (shared_view(shared.match(topic)) == {("g", topic_filter): {"c": "v"}}) is expected


def test_shared_groups_keep_subscription_order_and_are_per_filter() -> None:
    tree = SubscriptionTree()
    tree.add("c3", "$share/g/s/+", "v3")
    tree.add("c1", "$share/g/s/+", "v1")
    tree.add("c2", "$share/g/s/+", "v2")
    tree.add("c1", "$share/g/s/#", "w1")  # same group name, other filter: other shared sub
    tree.add("c9", "$share/other/s/t", "x9")
    tree.add("c1", "s/t", "n1")  # a non-shared one alongside
    tree.add("c3", "$share/g/s/+", "v3b")  # replacing keeps c3's place
    match = tree.match("s/t")
    assert match.normal == [("c1", "n1")]
    view = shared_view(match)
    assert set(view) == {("g", "s/+"), ("g", "s/#"), ("other", "s/t")}
    assert list(view[("g", "s/+")].items()) == [("c3", "v3b"), ("c1", "v1"), ("c2", "v2")]
    assert view[("g", "s/#")] == {"c1": "w1"}
    assert view[("other", "s/t")] == {"c9": "x9"}
    assert tree.match("s").shared == [("g", "s/#", {"c1": "w1"})]


def test_removing_a_shared_member_and_the_last_member() -> None:
    tree = SubscriptionTree()
    tree.add("c1", "$share/g/a", 1)
    tree.add("c2", "$share/g/a", 2)
    assert tree.remove("c1", "$share/g/a") is True
    assert tree.remove("c1", "$share/g/a") is False
    assert tree.remove("c2", "$share/h/a") is False  # other group
    assert tree.remove("c2", "a") is False  # the non-shared filter is another subscription
    assert shared_view(tree.match("a")) == {("g", "a"): {"c2": 2}}
    assert tree.remove("c2", "$share/g/a") is True
    assert tree.match("a").shared == []
    assert len(tree) == 0
    assert node_count(tree) == 0


def test_remove_prunes_empty_nodes_only() -> None:
    tree = SubscriptionTree()
    tree.add("c1", "a/b/c/d", 1)
    tree.add("c1", "a/b", 2)
    tree.add("c2", "a/x/#", 3)
    assert node_count(tree) == 6  # a, b, c, d, x, #
    assert tree.remove("c1", "a/b/c/d") is True
    assert node_count(tree) == 4  # c and d pruned; b still holds "a/b"
    assert tree.match("a/b").normal == [("c1", 2)]
    assert tree.remove("c1", "a/b") is True
    assert node_count(tree) == 3  # a, x, #
    assert tree.remove("c2", "a/x/#") is True
    assert node_count(tree) == 0
    assert len(tree) == 0


def test_remove_unknown_returns_false_and_changes_nothing() -> None:
    tree = SubscriptionTree()
    tree.add("c1", "a/b", 1)
    assert tree.remove("c2", "a/b") is False
    assert tree.remove("c1", "a") is False
    assert tree.remove("c1", "a/b/c") is False
    assert tree.remove("c1", "x") is False
    assert len(tree) == 1
    assert node_count(tree) == 2
    assert tree.match("a/b").normal == [("c1", 1)]


def test_invalid_filters_are_refused() -> None:
    tree = SubscriptionTree()
    for bad in ("", "a/#/b", "a+", "$share/g", "$share//a", "$share/g+/a"):
        with pytest.raises(ValueError):
            tree.add("c", bad, 1)
    assert len(tree) == 0


def test_cache_returns_the_same_result_until_a_change() -> None:
    tree = SubscriptionTree()
    tree.add("c1", "a/+", 1)
    first = tree.match("a/b")
    assert tree.match("a/b") is first  # served from the cache
    tree.add("c2", "a/b", 2)
    second = tree.match("a/b")
    assert second is not first
    assert sorted(second.normal) == [("c1", 1), ("c2", 2)]
    assert first.normal == [("c1", 1)]  # an old result is not changed behind its holder
    tree.add("c1", "a/+", 3)  # replacement invalidates too
    assert sorted(tree.match("a/b").normal) == [("c1", 3), ("c2", 2)]
    tree.remove("c2", "a/b")
    assert tree.match("a/b").normal == [("c1", 3)]
    tree.remove("c1", "a/+")
    assert not tree.match("a/b")


def test_cached_shared_members_do_not_change_with_the_tree() -> None:
    tree = SubscriptionTree()
    tree.add("c1", "$share/g/a", 1)
    held = tree.match("a")
    tree.add("c2", "$share/g/a", 2)
    assert held.shared == [("g", "a", {"c1": 1})]
    assert tree.match("a").shared == [("g", "a", {"c1": 1, "c2": 2})]


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subscriptions, "CACHE_SIZE", 8)
    tree = SubscriptionTree()
    tree.add("c", "#", 1)
    for i in range(100):
        assert tree.match(f"t/{i}").normal == [("c", 1)]
        assert len(tree._cache) <= 8
    assert "t/99" in tree._cache and "t/0" not in tree._cache


# ---- the trie against a brute-force oracle ------------------------------------

_levels = st.sampled_from(["a", "b", "", "$s"])
_filter_levels = st.sampled_from(["a", "b", "", "$s", "+", "#"])
_topics = st.lists(_levels, min_size=1, max_size=4).map("/".join).filter(bool)
_plain_filters = (
    st.lists(_filter_levels, min_size=1, max_size=4).map("/".join).filter(is_valid_topic_filter)
)
_filters = st.one_of(
    _plain_filters,
    st.tuples(st.sampled_from(["g", "h"]), _plain_filters).map(lambda t: f"$share/{t[0]}/{t[1]}"),
)
_operations = st.lists(
    st.tuples(st.booleans(), st.sampled_from(["c1", "c2", "c3"]), _filters),
    max_size=40,
)


def oracle(
    subs: dict[tuple[str, str], object], topic: str
) -> tuple[list[tuple[str, object]], dict[tuple[str, str], dict[str, object]]]:
    normal = []
    shared: dict[tuple[str, str], dict[str, object]] = {}
    for (client_id, topic_filter), value in subs.items():
        group, plain = split_shared(topic_filter)
        if not topic_matches(plain, topic):
            continue
        if group is None:
            normal.append((client_id, value))
        else:
            shared.setdefault((group, plain), {})[client_id] = value
    return normal, shared


@settings(max_examples=300)
@given(_operations, st.lists(_topics, min_size=1, max_size=8))
def test_trie_agrees_with_brute_force(
    operations: list[tuple[bool, str, str]], topics: list[str]
) -> None:
    tree = SubscriptionTree()
    subs: dict[tuple[str, str], object] = {}  # insertion order = subscription order
    for step, (is_add, client_id, topic_filter) in enumerate(operations):
        key = (client_id, topic_filter)
        if is_add:
            assert tree.add(client_id, topic_filter, step) is (key not in subs)
            subs[key] = step  # a replacement keeps its position, like the tree
        else:
            assert tree.remove(client_id, topic_filter) is (key in subs)
            subs.pop(key, None)
        assert len(tree) == len(subs)
        for topic in topics:  # interleaved, so stale cache entries would show
            normal, shared = oracle(subs, topic)
            match = tree.match(topic)
            assert sorted(match.normal, key=repr) == sorted(normal, key=repr)
            assert len(match.shared) == len(shared)
            view = shared_view(match)
            assert view == shared
            for key_, members in shared.items():
                assert list(view[key_]) == list(members)  # subscription order
    for client_id, topic_filter in list(subs):
        assert tree.remove(client_id, topic_filter)
    assert len(tree) == 0
    assert node_count(tree) == 0
