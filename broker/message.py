"""The values every layer shares: an application message and a subscription's options.

Plain data with no behaviour and no imports from the rest of the broker, so that the
protocol codec, the core and the storage can all use them while knowing nothing of
each other: the storage keeps its own identities for messages (see
``broker.storage.identity``), the core keeps its own caches, the codec its own
wire formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, weakref_slot=True)
class Message:
    """An application message as published (before per-subscriber QoS and ids)."""

    topic: str
    payload: bytes
    qos: int  # QoS it was published with
    retain: bool
    properties: dict = field(default_factory=dict)  # MQTT 5 properties that travel with it
    expires_at: float | None = None  # wall-clock time.time(); None = never
    # The core's cache of its MQTT 3.1.1 QoS 0 PUBLISH, encoded once for every subscriber
    # of a fan-out. Not part of the message's value; never stored.
    wire_v4_qos0: bytes | None = field(default=None, compare=False, repr=False)
    # Wall-clock time.time() the broker received it (set when first queued, kept by the storage):
    # how long the oldest queued message has waited (python -m broker inspect). None = unknown
    # (stored by a broker before schema 3). Not part of the message's value.
    received_at: float | None = field(default=None, compare=False)


@dataclass(slots=True)
class SubscriptionOptions:
    """The options of one subscription (MQTT 5 3.8.3.1; v3.1.1 uses only the QoS)."""

    qos: int = 0
    no_local: bool = False  # v5 only
    retain_as_published: bool = False  # v5 only
    retain_handling: int = 0  # v5 only: 0 send, 1 send if new, 2 don't send
