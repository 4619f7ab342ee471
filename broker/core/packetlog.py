"""mosquitto -v's packet lines, so people who debug devices with it find the same wording.

Called only when ``Connection.trace`` is set (``-v`` or ``[log] log_packets``): when it
is off, a packet costs one attribute test.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from broker.protocol.packets import (
    Auth,
    Connack,
    Disconnect,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)

if TYPE_CHECKING:
    from broker.core.connection import Connection
    from broker.protocol.packets import Packet
    from broker.message import Message

log = logging.getLogger("broker")


def _publish_fields(dup: bool, qos: int, retain: bool, packet_id: int | None, topic: str, size: int) -> str:
    return f"(d{int(dup)}, q{qos}, r{int(retain)}, m{packet_id or 0}, '{topic}', ... ({size} bytes))"


def received(conn: Connection, packet: Packet) -> None:
    """``Received X from CLIENT (...)``, as mosquitto's handle_*.c log them."""
    name = conn.name
    kind = type(packet)
    if kind is Publish:
        assert isinstance(packet, Publish)
        fields = _publish_fields(packet.dup, packet.qos, packet.retain, packet.packet_id, packet.topic, len(packet.payload))
        log.info("Received PUBLISH from %s %s", name, fields)
    elif kind is Puback or kind is Pubcomp:
        assert isinstance(packet, (Puback, Pubcomp))
        log.info("Received %s from %s (Mid: %d, RC:%d)", kind.__name__.upper(), name, packet.packet_id, packet.reason_code)
    elif kind is Pubrec or kind is Pubrel:
        assert isinstance(packet, (Pubrec, Pubrel))
        log.info("Received %s from %s (Mid: %d)", kind.__name__.upper(), name, packet.packet_id)
    elif kind is Subscribe:
        assert isinstance(packet, Subscribe)
        log.info("Received SUBSCRIBE from %s", name)
        for topic_filter, options in packet.subscriptions:
            log.info("\t%s (QoS %d)", topic_filter, options.qos)
    elif kind is Unsubscribe:
        assert isinstance(packet, Unsubscribe)
        log.info("Received UNSUBSCRIBE from %s", name)
        for topic_filter in packet.topic_filters:
            log.info("\t%s", topic_filter)
    elif kind is Pingreq or kind is Disconnect or kind is Auth:
        log.info("Received %s from %s", kind.__name__.upper(), name)
    # CONNECT is logged by the handler as "New client connected from ...", as by mosquitto.


def sending(conn: Connection, packet: Packet) -> None:
    """``Sending X to CLIENT (...)``."""
    name = conn.name
    kind = type(packet)
    if kind is Connack:
        assert isinstance(packet, Connack)
        log.info("Sending CONNACK to %s (%d, %d)", name, int(packet.session_present), packet.reason_code)
    elif kind is Puback or kind is Pubrec:
        assert isinstance(packet, (Puback, Pubrec))
        log.info("Sending %s to %s (m%d, rc%d)", kind.__name__.upper(), name, packet.packet_id, packet.reason_code)
    elif kind is Pubrel or kind is Pubcomp:
        assert isinstance(packet, (Pubrel, Pubcomp))
        log.info("Sending %s to %s (m%d)", kind.__name__.upper(), name, packet.packet_id)
    elif kind is Suback or kind is Unsuback:
        log.info("Sending %s to %s", kind.__name__.upper(), name)
    elif kind is Disconnect:
        assert isinstance(packet, Disconnect)
        log.info("Sending DISCONNECT to %s (%d)", name, packet.reason_code)
    else:
        log.info("Sending %s to %s", kind.__name__.upper(), name)


def sending_publish(
    conn: Connection, message: Message, qos: int, retain: bool, packet_id: int | None, dup: bool
) -> None:
    fields = _publish_fields(dup, qos, retain, packet_id, message.topic, len(message.payload))
    log.info("Sending PUBLISH to %s %s", conn.name, fields)


def sending_pingresp(conn: Connection) -> None:
    log.info("Sending PINGRESP to %s", conn.name)
