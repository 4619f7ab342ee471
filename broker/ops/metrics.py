"""Prometheus metrics, read from the engine's plain counters at scrape time.

The hot path only increments integers (``Engine.stats``, session counters); this
collector turns them into metric families when Prometheus asks, using the official
``prometheus_client`` (its custom-collector API and ``generate_latest``), so no
prometheus object is touched per message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from broker import __version__
from broker.core.engine import COMMIT_SECONDS_BUCKETS

if TYPE_CHECKING:
    from broker.core.engine import Engine

PROTOCOL_VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}


def database_bytes(db_path: str | None) -> int:
    """Size of the database file and its WAL (what the SD card holds)."""
    if db_path is None:
        return 0
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(db_path + suffix).st_size
        except OSError:
            pass
    return total


def retained_count(engine: Engine) -> int:
    """Retained messages that clients published (the $SYS statistics are retained in RAM too)."""
    sys_topics = engine.retained.matching("$SYS/#", lambda topic: None)  # they never expire
    return len(engine.retained) - len(sys_topics)


class EngineCollector(Collector):
    """One scrape: walks the sessions once; everything else is a counter read."""

    def __init__(self, engine: Engine, db_path: str | None, ready: Callable[[], list[str]]) -> None:
        self.engine = engine
        self.db_path = db_path
        self.ready = ready

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        engine = self.engine
        stats = engine.stats

        info = GaugeMetricFamily("edgemq_build_info", "The broker's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        connections: dict[tuple[str, str], int] = {}
        for conn in list(engine.connections):
            if conn.session is None:
                continue  # not through CONNECT yet, or closed
            key = (conn.transport.listener.name, PROTOCOL_VERSIONS.get(conn.version, str(conn.version)))
            connections[key] = connections.get(key, 0) + 1
        gauge = GaugeMetricFamily(
            "edgemq_connections", "Connected MQTT clients.", labels=["listener", "protocol_version"]
        )
        for (listener, version), count in sorted(connections.items()):
            gauge.add_metric([listener, version], count)
        yield gauge
        yield CounterMetricFamily(
            "edgemq_connections_opened", "Network connections accepted (before CONNECT).",
            value=stats.connections_opened,
        )
        yield CounterMetricFamily("edgemq_connects", "CONNECT packets accepted.", value=stats.connects)
        disconnects = CounterMetricFamily(
            "edgemq_disconnects", "Connected clients gone, by reason.", labels=["reason"]
        )
        for reason, count in sorted(stats.disconnects.items()):
            disconnects.add_metric([reason], count)
        yield disconnects

        received = CounterMetricFamily(
            "edgemq_messages_received", "PUBLISH packets received from clients.", labels=["qos"]
        )
        sent = CounterMetricFamily("edgemq_messages_sent", "PUBLISH packets sent to clients.", labels=["qos"])
        for qos in range(3):
            received.add_metric([str(qos)], stats.received_by_qos[qos])
            sent.add_metric([str(qos)], stats.sent_by_qos[qos])
        yield received
        yield sent
        yield CounterMetricFamily("edgemq_received_bytes", "Bytes read from clients.", value=stats.bytes_received)
        yield CounterMetricFamily("edgemq_sent_bytes", "Bytes written to clients.", value=stats.bytes_sent)

        dropped = CounterMetricFamily(
            "edgemq_messages_dropped", "Messages not delivered to a subscriber, by reason.", labels=["reason"]
        )
        # engine.dropped_messages counts queue-full drops, stalled subscribers and slow consumers
        # (as $SYS does).
        dropped.add_metric(
            ["queue_full"], engine.dropped_messages - stats.dropped_slow_consumer - stats.dropped_stalled
        )
        dropped.add_metric(["stalled"], stats.dropped_stalled)
        dropped.add_metric(["slow_consumer"], stats.dropped_slow_consumer)
        dropped.add_metric(["too_large"], stats.dropped_too_large)
        dropped.add_metric(["expired"], stats.dropped_expired)
        yield dropped

        queued = queued_bytes = largest = largest_bytes = inflight = online = 0
        for session in list(engine.sessions.values()):
            count = session.queued_count
            size = session.queued_bytes
            queued += count
            queued_bytes += size
            largest = max(largest, count)
            largest_bytes = max(largest_bytes, size)
            inflight += len(session.inflight)
            if session.connection is not None:
                online += 1
        sessions = GaugeMetricFamily("edgemq_sessions", "Sessions, by whether their client is connected.",
                                     labels=["state"])
        sessions.add_metric(["connected"], online)
        sessions.add_metric(["disconnected"], len(engine.sessions) - online)
        yield sessions
        yield GaugeMetricFamily("edgemq_queued_messages", "Messages waiting to be sent, all sessions.", value=queued)
        yield GaugeMetricFamily("edgemq_queued_bytes", "Payload bytes waiting to be sent, all sessions.",
                                value=queued_bytes)
        yield GaugeMetricFamily("edgemq_largest_queue_messages", "Messages queued for the session with most.",
                                value=largest)
        yield GaugeMetricFamily("edgemq_largest_queue_bytes", "Payload bytes queued for the session with most.",
                                value=largest_bytes)
        yield GaugeMetricFamily("edgemq_inflight_messages", "QoS 1/2 messages sent and not yet acknowledged.",
                                value=inflight)
        yield GaugeMetricFamily("edgemq_retained_messages", "Retained messages.", value=retained_count(engine))
        yield GaugeMetricFamily("edgemq_subscriptions", "Subscriptions, all sessions.", value=len(engine.tree))

        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*COMMIT_SECONDS_BUCKETS, float("inf")), stats.commit_buckets):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        histogram = HistogramMetricFamily(
            "edgemq_storage_commit_duration_seconds",
            "Group commits (one transaction, one fsync with sync = full), by duration.",
            buckets=buckets, sum_value=stats.commit_seconds_sum,
        )
        yield histogram
        yield CounterMetricFamily("edgemq_storage_commits", "Group commits written.", value=stats.commits)
        yield GaugeMetricFamily("edgemq_storage_database_bytes", "Size of the database with its WAL.",
                                value=database_bytes(self.db_path))
        yield GaugeMetricFamily("edgemq_ready", "1 when /readyz succeeds.", value=0 if self.ready() else 1)


def build_registry(engine: Engine, db_path: str | None, ready: Callable[[], list[str]]) -> CollectorRegistry:
    """The registry /metrics serves: the engine's figures plus process RSS and CPU."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, db_path, ready))
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
