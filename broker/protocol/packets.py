"""MQTT control packets as plain slotted objects, shared by v3.1.1 and v5.

The codec (``codec.py``) turns bytes into these objects and back; the broker
engine only ever sees these. Fields that exist only in v5 (properties, reason
codes on acknowledgements) are simply left at their defaults for v3.1.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A value shared with the core and the storage (broker/message.py has no other imports).
from broker.message import SubscriptionOptions

# Packet type numbers (fixed header, high nibble).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

# Protocol levels carried in CONNECT.
MQTT_3_1 = 3
MQTT_3_1_1 = 4
MQTT_5 = 5


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: dict = field(default_factory=dict)  # v5 will properties


@dataclass(slots=True)
class Connect:
    client_id: str
    protocol_level: int = MQTT_3_1_1
    protocol_name: str = "MQTT"
    clean_start: bool = True  # v3.1.1 "clean session"
    keepalive: int = 0
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: dict = field(default_factory=dict)
    packet_type = CONNECT


@dataclass(slots=True)
class Connack:
    session_present: bool = False
    reason_code: int = 0  # v5 reason code; for v3.1.1 the return code
    properties: dict = field(default_factory=dict)
    packet_type = CONNACK


@dataclass(slots=True)
class Publish:
    topic: str  # may be "" in v5 when a TOPIC_ALIAS property stands for it
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # present iff qos > 0
    properties: dict = field(default_factory=dict)
    # The packet as received, when it is exactly what an MQTT 3.1.1 QoS 0 PUBLISH of this
    # topic and payload encodes to (set by the codec's reader): forwarded as it came.
    wire: bytes | None = field(default=None, compare=False, repr=False)
    packet_type = PUBLISH


@dataclass(slots=True)
class Puback:
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)
    packet_type = PUBACK


@dataclass(slots=True)
class Pubrec:
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)
    packet_type = PUBREC


@dataclass(slots=True)
class Pubrel:
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)
    packet_type = PUBREL


@dataclass(slots=True)
class Pubcomp:
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)
    packet_type = PUBCOMP


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    subscriptions: list[tuple[str, SubscriptionOptions]]
    properties: dict = field(default_factory=dict)  # SUBSCRIPTION_IDENTIFIER is a list here too
    packet_type = SUBSCRIBE


@dataclass(slots=True)
class Suback:
    packet_id: int
    reason_codes: list[int]
    properties: dict = field(default_factory=dict)
    packet_type = SUBACK


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: list[str]
    properties: dict = field(default_factory=dict)
    packet_type = UNSUBSCRIBE


@dataclass(slots=True)
class Unsuback:
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)  # v5 only; empty for v3.1.1
    properties: dict = field(default_factory=dict)
    packet_type = UNSUBACK


@dataclass(slots=True)
class Pingreq:
    packet_type = PINGREQ


@dataclass(slots=True)
class Pingresp:
    packet_type = PINGRESP


@dataclass(slots=True)
class Disconnect:
    reason_code: int = 0
    properties: dict = field(default_factory=dict)
    packet_type = DISCONNECT


@dataclass(slots=True)
class Auth:
    reason_code: int = 0
    properties: dict = field(default_factory=dict)
    packet_type = AUTH


Packet = (
    Connect | Connack | Publish | Puback | Pubrec | Pubrel | Pubcomp | Subscribe | Suback
    | Unsubscribe | Unsuback | Pingreq | Pingresp | Disconnect | Auth
)
