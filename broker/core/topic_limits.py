"""How deep and how long a topic name or filter may be (``[limits] max_topic_levels``, ``max_topic_length``).

The protocol allows 65535 bytes, which is 32,768 levels of ``a/a/...``: one such
filter used to cost a gigabyte. Every level costs a node in the subscription
and retained trees and a step in every match, so the depth is bounded like
mosquitto's (200 levels). The checks come before any work on a topic: a count of
``/`` and a length test, both in C.
"""

from __future__ import annotations

from broker.protocol.topics import is_valid_topic_filter, is_valid_topic_name, split_shared


class TopicLimits:
    """The configured bounds; ``name_problem`` / ``filter_problem`` say why a topic is refused."""

    __slots__ = ("max_levels", "max_length")

    def __init__(self, max_levels: int, max_length: int) -> None:
        self.max_levels = max_levels  # 0 = no limit
        self.max_length = max_length  # bytes of UTF-8; 0 = the protocol's 65535

    def _levels_problem(self, text: str, what: str) -> str | None:
        max_levels = self.max_levels
        if max_levels and text.count("/") >= max_levels:
            return f"{what} has more than {max_levels} levels (max_topic_levels)"
        return None

    def _length_problem(self, text: str, what: str) -> str | None:
        max_length = self.max_length
        # len() counts code points; UTF-8 takes 1 to 4 bytes for each.
        if max_length and len(text) > max_length // 4 and len(text.encode("utf-8", "surrogatepass")) > max_length:
            return f"{what} is longer than {max_length} bytes (max_topic_length)"
        return None

    def name_problem(self, topic: str) -> str | None:
        """None if a PUBLISH may use ``topic``; otherwise why not."""
        if not is_valid_topic_name(topic):
            return "invalid topic name"
        return self.decoded_name_problem(topic)

    def decoded_name_problem(self, topic: str) -> str | None:
        """``name_problem`` for a name the codec has checked already (not empty, no wildcard,
        no U+0000, at most 65535 bytes): only the limits, on every PUBLISH."""
        # The per-PUBLISH fast path: few levels and few code points need no closer look.
        max_levels = self.max_levels
        if (not max_levels or topic.count("/") < max_levels) and (
            not self.max_length or len(topic) <= self.max_length // 4
        ):
            return None
        return self._levels_problem(topic, "topic name") or self._length_problem(topic, "topic name")

    def filter_problem(self, topic_filter: str) -> str | None:
        """None if a SUBSCRIBE may use ``topic_filter`` (shared or not); otherwise why not."""
        if not is_valid_topic_filter(topic_filter):
            return "invalid topic filter"
        _, plain = split_shared(topic_filter)  # "$share/<group>/" adds no level to the trie
        return self._levels_problem(plain, "topic filter") or self._length_problem(topic_filter, "topic filter")
