"""Retained messages for a new subscription, sent a page at a time while the client keeps up.

One SUBSCRIBE of 400 x ``#`` over 10,000 retained messages used to put four
million PUBLISH packets in one client's output at once: 2.0 GB and a 9.2 s
stall (issue 15). Now a SUBSCRIBE's filters are matched one at a time, their
messages go out ``PAGE`` at a time, one page per event-loop iteration, and the
next page waits while the client's output or queue is still full: the same
flow control as any delivery (QoS 1/2 through the session's in-flight window
and queue, QoS 0 only while the client reads).

A retained message replaced or cleared while its page waited is skipped: the
new value has gone out as a live message, and the old one must not follow it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.core.slow_consumer import SOFT_BYTES

if TYPE_CHECKING:
    from broker.core.connection import Connection
    from broker.core.session import Session
    from broker.message import Message

PAGE = 100  # messages per event-loop iteration
WAIT_BYTES = SOFT_BYTES // 4  # unsent output beyond which the next page waits
RETRY_SECONDS = 0.02


class RetainedSender:
    """Sends the retained messages of ``filters`` ((filter, granted QoS, subscription id)) in pages."""

    __slots__ = ("conn", "session", "filters", "messages", "qos", "sub_ids")

    def __init__(self, conn: Connection, session: Session, filters: list[tuple[str, int, int | None]]) -> None:
        self.conn = conn
        self.session = session
        self.filters = filters[::-1]  # popped from the end, in SUBSCRIBE order
        self.messages: list[Message] = []  # of the current filter, reversed
        self.qos = 0
        self.sub_ids: list[int] = []

    def start(self) -> None:
        self.conn.engine.loop.call_soon(self.step)

    def step(self) -> None:
        conn, session = self.conn, self.session
        if session.connection is not conn:
            return  # the connection is gone (or taken over): a new SUBSCRIBE will ask again
        loop = conn.engine.loop
        if conn.transport.write_buffer_size() > WAIT_BYTES or session.backlog or len(session.pending) >= PAGE:
            loop.call_later(RETRY_SECONDS, self.step)
            return
        current = conn.engine.retained.get
        sent = 0
        while sent < PAGE:
            if not self.messages:
                if not self.filters:
                    return
                topic_filter, self.qos, sub_id = self.filters.pop()
                self.sub_ids = [sub_id] if sub_id is not None else []
                self.messages = conn.engine.retained_for(topic_filter)[::-1]
                continue
            message = self.messages.pop()
            if current(message.topic) is not message:
                continue  # replaced or cleared since: the newer state went out live
            session.deliver(message, min(self.qos, message.qos), True, self.sub_ids)
            sent += 1
        if self.messages or self.filters:
            loop.call_soon(self.step)
