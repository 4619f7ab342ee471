"""Topic names, topic filters and the matching rule (MQTT 3.1.1 s4.7, MQTT 5 s4.7-4.8).

Plain functions on ``str``: no I/O, no state. They run for every PUBLISH and
SUBSCRIBE, so each one first takes a cheap path (substring tests on the whole
string) and only splits into levels when a wildcard is present.

The codec has already checked that strings are well-formed UTF-8; what is left
here are the topic rules themselves.
"""

from __future__ import annotations

MAX_TOPIC_BYTES = 65535  # a UTF-8 string in MQTT carries a 16-bit length
SHARE_PREFIX = "$share/"
_SHARE_PREFIX_LEN = len(SHARE_PREFIX)
# A str of at most this many code points is at most 65535 bytes in UTF-8
# (4 bytes per code point at most), so the encode can be skipped.
_SURELY_SHORT = MAX_TOPIC_BYTES // 4


def _fits(text: str) -> bool:
    """True if ``text`` is at most 65535 bytes in UTF-8 (and encodable at all)."""
    if len(text) <= _SURELY_SHORT:
        return True
    if len(text) > MAX_TOPIC_BYTES:
        return False
    try:
        return len(text.encode("utf-8")) <= MAX_TOPIC_BYTES
    except UnicodeEncodeError:  # lone surrogates: not a valid MQTT string
        return False


def is_valid_topic_name(topic: str) -> bool:
    """A name a PUBLISH may carry: non-empty, no wildcards, no U+0000, fits 65535 bytes."""
    return (
        bool(topic)
        and "+" not in topic
        and "#" not in topic
        and "\x00" not in topic
        and _fits(topic)
    )


def _is_valid_plain_filter(topic_filter: str) -> bool:
    """The wildcard rules for a filter that is not (or no longer) a shared one."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    if "+" in topic_filter or "#" in topic_filter:
        levels = topic_filter.split("/")
        last = len(levels) - 1
        for index, level in enumerate(levels):
            if level == "+":
                continue
            if level == "#":
                if index != last:  # '#' must be the last level
                    return False
                continue
            if "+" in level or "#" in level:  # a wildcard must be the whole level
                return False
    return _fits(topic_filter)


def is_valid_topic_filter(topic_filter: str) -> bool:
    """A filter a SUBSCRIBE/UNSUBSCRIBE may carry, including ``$share/<group>/<filter>``.

    The share name must be non-empty and free of ``/``, ``+`` and ``#``; the
    filter after it must itself be a valid, non-empty filter.
    """
    if topic_filter.startswith(SHARE_PREFIX):
        if not _fits(topic_filter):
            return False
        group, sep, inner = topic_filter[_SHARE_PREFIX_LEN:].partition("/")
        if not sep or not group or "+" in group or "#" in group or "\x00" in group:
            return False
        return _is_valid_plain_filter(inner)
    return _is_valid_plain_filter(topic_filter)


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``("g", "a/b")`` for ``"$share/g/a/b"``; ``(None, topic_filter)`` for a non-shared filter.

    Expects a filter that passed ``is_valid_topic_filter``; a malformed
    ``$share/...`` without a group separator is returned as non-shared.
    """
    if topic_filter.startswith(SHARE_PREFIX):
        group, sep, inner = topic_filter[_SHARE_PREFIX_LEN:].partition("/")
        if sep:
            return group, inner
    return None, topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Does a (non-shared) filter match a topic name?

    ``+`` matches exactly one level (which may be empty), ``#`` the rest
    including the parent itself (``sport/#`` matches ``sport``), and a filter
    starting with a wildcard never matches a topic starting with ``$``.
    For a shared subscription pass the filter part of ``split_shared``.
    """
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    if topic[:1] == "$" and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    topic_count = len(topic_levels)
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True  # matches the remaining levels, zero or more
        if index >= topic_count:
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == topic_count
