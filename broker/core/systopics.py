"""``$SYS/broker/...`` statistics, published like mosquitto's (retained, on change).

They live in the retained store in RAM only: they describe this run of the broker,
so writing them to the database would only wear the SD card.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker import __version__
from broker.message import Message

if TYPE_CHECKING:
    from broker.core.engine import Engine


class SysTopics:
    __slots__ = ("engine", "started", "last_published", "_values", "sources")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.started = time.monotonic()
        self.last_published = 0.0
        self._values: dict[str, str] = {}
        # More values from outside the core (the listeners' TLS handshake counts, ...).
        self.sources: list[Callable[[], dict[str, str]]] = []

    def snapshot(self) -> dict[str, str]:
        engine = self.engine
        connected = sum(1 for s in engine.sessions.values() if s.connection is not None)
        stats = engine.stats
        values = {
            "$SYS/broker/version": f"edgemq version {__version__}",
            "$SYS/broker/uptime": f"{int(time.monotonic() - self.started)} seconds",
            "$SYS/broker/clients/connected": str(connected),
            "$SYS/broker/clients/disconnected": str(len(engine.sessions) - connected),
            "$SYS/broker/clients/total": str(len(engine.sessions)),
            "$SYS/broker/subscriptions/count": str(len(engine.tree)),
            "$SYS/broker/retained messages/count": str(len(engine.retained)),
            "$SYS/broker/publish/messages/received": str(stats.publish_received),
            "$SYS/broker/publish/messages/sent": str(stats.publish_sent),
            "$SYS/broker/publish/messages/dropped": str(engine.dropped_messages),
        }
        if engine.dropped_messages:
            stalled, slow = stats.dropped_stalled, stats.dropped_slow_consumer
            values["$SYS/broker/publish/messages/dropped/queue_full"] = str(engine.dropped_messages - stalled - slow)
            values["$SYS/broker/publish/messages/dropped/stalled"] = str(stalled)
            values["$SYS/broker/publish/messages/dropped/slow_consumer"] = str(slow)
        for source in self.sources:
            values.update(source())
        return values

    def publish(self, now: float) -> None:
        """Publish every value that changed since the last time (at most once per interval)."""
        interval = self.engine.config.sys_interval
        if not interval or now - self.last_published < interval:
            return
        self.last_published = now
        for topic, value in self.snapshot().items():
            if self._values.get(topic) != value:
                self._values[topic] = value
                self.engine.route(Message(topic, value.encode(), 0, True), None, persist_retained=False)
