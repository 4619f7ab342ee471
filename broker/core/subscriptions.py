"""Who is subscribed to what: a topic trie answering "which subscriptions match this topic?".

Every PUBLISH asks that question, so the trie is walked level by level (cost
grows with the depth of the topic, not with the number of subscriptions) and
answers are cached per topic name: devices publish to the same few topics over
and over. Any change to the subscriptions clears the cache, so a cached answer
is never stale.

Values are opaque: the engine stores its own subscription objects and decides
QoS, identifiers, no-local and which member of a shared group gets a message.
The classes are generic in the value type only so that the type checker knows
what comes back out; that costs nothing at run time.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from broker.protocol.topics import is_valid_topic_filter, split_shared

V = TypeVar("V")  # the caller's subscription value

CACHE_SIZE = 10_000  # topics whose match results are kept, at most
# ... and the bytes they may take (topic names can be 64 KB: 10,000 of them were 646 MB).
CACHE_BYTES = 4 << 20
_ENTRY_OVERHEAD = 200  # a dict slot, the Match and its lists
_ITEM_BYTES = 60  # one (client_id, value) tuple in a Match


class Match(Generic[V]):
    """The subscriptions matching one topic. Shared by the cache: read, never mutate."""

    __slots__ = ("normal", "shared", "plan")

    def __init__(
        self,
        normal: list[tuple[str, V]],
        shared: list[tuple[str, str, dict[str, V]]],
    ) -> None:
        # (client_id, value) per matching non-shared subscription; a client
        # with several matching filters appears once for each of them.
        self.normal = normal
        # (group, filter without the "$share/<group>/" prefix, members) per
        # matching shared subscription; members map client_id -> value in
        # subscription order. The same group name under two filters is two
        # different shared subscriptions (MQTT 5 s4.8.2).
        self.shared = shared
        # The caller's memo of what it derives from this match (the engine's delivery plan).
        # Valid for the match's lifetime: any change of subscriptions makes new matches.
        self.plan: Any = None

    def __bool__(self) -> bool:
        return bool(self.normal or self.shared)

    def __repr__(self) -> str:
        return f"Match(normal={self.normal!r}, shared={self.shared!r})"


class _Node(Generic[V]):
    """One topic level; holds the subscriptions whose filter ends here.

    A node keeps no copy of its prefix: a filter of n levels costs n nodes, not
    n squared characters (issue 15). Only a node with shared groups remembers its
    whole filter, once, because a shared match reports it.
    """

    __slots__ = ("children", "subscribers", "groups", "filter")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        self.subscribers: dict[str, V] = {}  # client_id -> value
        self.groups: dict[str, dict[str, V]] = {}  # group -> {client_id: value}
        self.filter = ""  # the plain filter this node stands for; set only while it has groups

    def is_empty(self) -> bool:
        return not (self.children or self.subscribers or self.groups)


class SubscriptionTree(Generic[V]):
    """Topic trie; values are opaque (the engine stores its own subscription objects)."""

    __slots__ = ("_root", "_count", "_cache", "_cache_bytes")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._count = 0
        self._cache: dict[str, Match[V]] = {}
        self._cache_bytes = 0  # estimated, see _entry_bytes

    def __len__(self) -> int:
        """Number of subscriptions (each client/filter pair counts once)."""
        return self._count

    def add(self, client_id: str, topic_filter: str, value: V) -> bool:
        """Subscribe; True if new, False if it replaced this client's same filter.

        ``topic_filter`` may be a shared one (``$share/<group>/<filter>``).
        Raises ValueError for an invalid filter: the caller should have
        answered that SUBSCRIBE with a failure code instead.
        """
        if not is_valid_topic_filter(topic_filter):
            raise ValueError(f"invalid topic filter {topic_filter!r}")
        group, plain = split_shared(topic_filter)
        node = self._root
        for level in plain.split("/"):
            child = node.children.get(level)
            if child is None:
                child = _Node()
                node.children[level] = child
            node = child
        if group is None:
            members = node.subscribers
        else:
            members = node.groups.setdefault(group, {})
            node.filter = plain
        is_new = client_id not in members
        members[client_id] = value  # a replacement keeps its place in the order
        if is_new:
            self._count += 1
        self._clear_cache()
        return is_new

    def remove(self, client_id: str, topic_filter: str) -> bool:
        """Unsubscribe; True if the subscription existed. Empty nodes are pruned."""
        group, plain = split_shared(topic_filter)
        path = [self._root]
        node = self._root
        levels = plain.split("/")
        for level in levels:
            child = node.children.get(level)
            if child is None:
                return False
            path.append(child)
            node = child
        members = node.subscribers if group is None else node.groups.get(group, {})
        if client_id not in members:
            return False
        del members[client_id]
        if group is not None and not members:
            del node.groups[group]
            if not node.groups:
                node.filter = ""
        self._count -= 1
        # Prune from the leaf upwards while nodes hold nothing.
        for depth in range(len(levels), 0, -1):
            if not path[depth].is_empty():
                break
            del path[depth - 1].children[levels[depth - 1]]
        self._clear_cache()
        return True

    def has_subscribers(self, topic_filter: str) -> bool:
        """True while anyone holds ``topic_filter`` (for a shared one: while its group has a member)."""
        group, plain = split_shared(topic_filter)
        node = self._root
        for level in plain.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            node = child
        return bool(node.subscribers) if group is None else group in node.groups

    def match(self, topic: str) -> Match[V]:
        """Every subscription matching ``topic`` (a valid topic name).

        The result is cached and shared between callers: do not mutate it.
        """
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        result = self._match(topic)
        if len(topic) > CACHE_BYTES // 256:
            return result  # a 16 KB name would push out hundreds of common topics
        size = _entry_bytes(topic, result)
        cache = self._cache
        while cache and (len(cache) >= CACHE_SIZE or self._cache_bytes + size > CACHE_BYTES):
            # Drop the oldest entry; dicts keep insertion order.
            oldest = next(iter(cache))
            self._cache_bytes -= _entry_bytes(oldest, cache.pop(oldest))
        cache[topic] = result
        self._cache_bytes += size
        return result

    def _clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0

    @property
    def cache_bytes(self) -> int:
        """The estimated size of the match cache (bounded by CACHE_BYTES)."""
        return self._cache_bytes

    def _match(self, topic: str) -> Match[V]:
        normal: list[tuple[str, V]] = []
        shared: list[tuple[str, str, dict[str, V]]] = []
        levels = topic.split("/")
        # MQTT-4.7.2-1: a filter starting with a wildcard does not match "$..." topics.
        wildcards_at_root = topic[:1] != "$"
        current = [self._root]
        for index, level in enumerate(levels):
            following: list[_Node[V]] = []
            wildcards = index > 0 or wildcards_at_root
            for node in current:
                children = node.children
                if not children:
                    continue
                if wildcards:
                    rest = children.get("#")
                    if rest is not None:  # '#' matches this level and all after it
                        _collect(rest, normal, shared)
                    single = children.get("+")
                    if single is not None:
                        following.append(single)
                exact = children.get(level)
                if exact is not None:
                    following.append(exact)
            if not following:
                return Match(normal, shared)
            current = following
        for node in current:
            _collect(node, normal, shared)
            # "a/#" also matches "a" itself (the parent level).
            rest = node.children.get("#")
            if rest is not None:
                _collect(rest, normal, shared)
        return Match(normal, shared)


def _entry_bytes(topic: str, match: Match[V]) -> int:
    """What one cache entry costs, roughly: the same figure when it is added and removed."""
    return _ENTRY_OVERHEAD + len(topic) + _ITEM_BYTES * (len(match.normal) + len(match.shared))


def _collect(
    node: _Node[V],
    normal: list[tuple[str, V]],
    shared: list[tuple[str, str, dict[str, V]]],
) -> None:
    if node.subscribers:
        normal.extend(node.subscribers.items())
    if node.groups:
        for group, members in node.groups.items():
            # A copy: a cached Match must not change when the tree does.
            shared.append((group, node.filter, dict(members)))
