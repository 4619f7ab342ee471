"""Retained messages: one per topic, matched against new subscriptions."""

from __future__ import annotations

import time
from collections.abc import Callable

from broker.protocol.topics import topic_matches
from broker.message import Message


class RetainedStore:
    __slots__ = ("_messages",)

    def __init__(self) -> None:
        self._messages: dict[str, Message] = {}

    def __len__(self) -> int:
        return len(self._messages)

    def set(self, message: Message) -> None:
        self._messages[message.topic] = message

    def clear(self, topic: str) -> bool:
        return self._messages.pop(topic, None) is not None

    def matching(self, topic_filter: str, on_expired: Callable[[str], None]) -> list[Message]:
        """Unexpired retained messages whose topic matches the filter.

        Expired ones are dropped here and reported through ``on_expired`` so the
        caller can clear them in storage too.
        """
        if "+" not in topic_filter and "#" not in topic_filter:
            found = self._messages.get(topic_filter)
            candidates = [found] if found is not None else []
        else:
            candidates = [m for t, m in self._messages.items() if topic_matches(topic_filter, t)]
        now = time.time()
        live = []
        for message in candidates:
            if message.expires_at is not None and message.expires_at <= now:
                del self._messages[message.topic]
                on_expired(message.topic)
            else:
                live.append(message)
        return live
