"""Server-side topic aliases (MQTT 5, 3.3.2.3.4): least recently used ones are reassigned."""

from __future__ import annotations

from collections import OrderedDict


class OutboundAliases:
    """Topic -> alias for one connection, at most ``maximum`` (the client's Topic Alias Maximum).

    ``choose`` only proposes; ``confirm`` records, once the PUBLISH carrying the alias is
    really sent (a packet dropped as too large must not leave the client an alias it never
    saw). When every alias is taken, the least recently used one is given to the new topic.
    """

    __slots__ = ("maximum", "_by_topic")

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._by_topic: OrderedDict[str, int] = OrderedDict()

    def choose(self, topic: str) -> tuple[int, bool]:
        """(alias, whether the client already knows it for this topic)."""
        by_topic = self._by_topic
        alias = by_topic.get(topic)
        if alias is not None:
            return alias, True
        if len(by_topic) < self.maximum:
            return len(by_topic) + 1, False
        return next(iter(by_topic.values())), False  # the least recently used

    def confirm(self, topic: str, alias: int) -> None:
        by_topic = self._by_topic
        if by_topic.get(topic) == alias:
            by_topic.move_to_end(topic)
            return
        if len(by_topic) >= self.maximum:
            oldest_topic, oldest_alias = next(iter(by_topic.items()))
            if oldest_alias == alias:
                del by_topic[oldest_topic]
        by_topic[topic] = alias

    def __len__(self) -> int:
        return len(self._by_topic)
