"""PUBLISH from a client, and PUBREL (the second half of an inbound QoS 2 flow)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from broker.core.ackgate import AckGate
from broker.core.empty import EMPTY_SET
from broker.core.sessions import message_from_publish
from broker.protocol import properties as P
from broker.protocol import reason_codes as RC
from broker.protocol.errors import ProtocolError
from broker.protocol.packets import MQTT_5, Puback, Pubcomp, Publish, Pubrec, Pubrel

log = logging.getLogger("broker")

if TYPE_CHECKING:
    from broker.core.connection import Connection

_PUBACK = b"\x40\x02"


def resolve_topic(conn: Connection, packet: Publish) -> str:
    """The PUBLISH's topic, after the v5 Topic Alias (set up or used); checked valid."""
    topic = packet.topic
    props = packet.properties
    if props and conn.version == MQTT_5:
        alias = props.get(P.TOPIC_ALIAS)
        if alias is not None:
            if alias > conn.engine.config.max_topic_alias:
                raise ProtocolError(f"topic alias {alias} above maximum", RC.TOPIC_ALIAS_INVALID)
            aliases = conn.aliases_in
            if topic:
                if aliases is None:
                    aliases = conn.aliases_in = {}
                aliases[alias] = topic
            else:
                aliased = aliases.get(alias) if aliases is not None else None
                if aliased is None:
                    raise ProtocolError(f"unknown topic alias {alias}", RC.PROTOCOL_ERROR)
                topic = aliased
    # The codec checked the name (and an alias' topic was checked when it was set up): only
    # the limits are left, and an ordinary name needs no closer look (``decoded_name_problem``).
    limits = conn.engine.topic_limits
    max_levels = limits.max_levels
    if (max_levels and topic.count("/") >= max_levels) or (limits.max_length and len(topic) > limits.max_length >> 2):
        problem = limits.decoded_name_problem(topic)
        if problem is not None:
            raise ProtocolError(f"{problem}: {topic[:200]!r}", RC.TOPIC_NAME_INVALID)
    return topic


def handle_publish(conn: Connection, packet: Publish) -> None:
    engine = conn.engine
    topic = resolve_topic(conn, packet)
    engine.stats.received_by_qos[packet.qos] += 1
    # $SYS holds the broker's own statistics: acknowledged but not routed, as with mosquitto.
    routed = not topic.startswith("$SYS")
    qos = packet.qos
    if packet.retain and not engine.config.retain_available:
        raise ProtocolError("retain not supported", RC.RETAIN_NOT_SUPPORTED)
    rights = conn.rights
    if rights is not None and not (rights.publish.get(topic) or rights.may_publish(topic)):
        # AUTH: denied. v5: PUBACK/PUBREC 0x87; v3.1.1 has no way to say it: acknowledged and
        # dropped, as mosquitto does. Checked on the topic an alias stands for.
        log.debug("Denied PUBLISH from %s (q%d, r%d, '%s').", conn.client_id, qos, packet.retain, topic)
        if conn.version == MQTT_5 and qos:
            assert packet.packet_id is not None
            conn.send_packet((Puback if qos == 1 else Pubrec)(packet.packet_id, RC.NOT_AUTHORIZED))
            return
        routed = False
    props = packet.properties
    flow = engine.flow
    if qos == 0:
        if routed:
            message = message_from_publish(topic, packet.payload, 0, packet.retain, props)
            message.wire_v4_qos0 = packet.wire  # as received, when that is its 3.1.1 form
            flow.feeder = conn  # a queue or slow output this fills holds this client back (core/flow.py)
            try:
                engine.route(message, conn.client_id)
            finally:
                flow.feeder = None
        return
    packet_id = packet.packet_id
    assert packet_id is not None  # the codec requires a non-zero id when qos > 0
    session = conn.active_session
    if qos == 2 and packet_id in session.inbound_qos2:
        # Re-sent before PUBREL: already routed once, acknowledge again only.
        conn.send_packet(Pubrec(packet_id), after_commit=True)
        return
    after_commit = True
    if engine.storage.full:
        if engine.needs_storage(topic, packet.retain, qos, session):
            return refuse_for_lack_of_space(conn, packet_id, qos)
        after_commit = False  # nothing of it is stored: no commit to wait for
    conn.inbound_unacked += 1
    if conn.inbound_unacked > engine.config.max_inflight_messages and conn.version == MQTT_5:
        raise ProtocolError("receive maximum exceeded", RC.RECEIVE_MAXIMUM_EXCEEDED)
    matched = 0
    # A QoS 1 PUBACK may go before the commit once every stored copy is acknowledged
    # (core/ackgate.py); a retained message is kept by the store itself: it waits.
    gate = AckGate() if qos == 1 and after_commit and not packet.retain else None
    if routed:
        flow.feeder = conn
        engine.ack_gate = gate
        try:
            matched = engine.route(message_from_publish(topic, packet.payload, qos, packet.retain, props), conn.client_id)
        finally:
            flow.feeder = None
            engine.ack_gate = None
    reason = RC.SUCCESS if matched or conn.version != MQTT_5 else RC.NO_MATCHING_SUBSCRIBERS
    if qos == 1:
        conn.inbound_unacked -= 1
        if reason == 0 and after_commit and not conn.trace:  # the common case, without a packet object
            conn.send_after_commit(_PUBACK + packet_id.to_bytes(2, "big"), gate)
        else:
            conn.send_packet(Puback(packet_id, reason), after_commit, gate)
    else:
        if session.inbound_qos2 is EMPTY_SET:
            session.inbound_qos2 = set()
        session.inbound_qos2.add(packet_id)
        if session.persistent:
            engine.storage.add_inbound_qos2(conn.client_id, packet_id)
        conn.send_packet(Pubrec(packet_id, reason), after_commit)


def refuse_for_lack_of_space(conn: Connection, packet_id: int, qos: int) -> None:
    """The storage is full: a v5 client gets 0x97 Quota exceeded, a v3.1.1 one (which has
    no way to be told) is disconnected and will resend after reconnecting."""
    if conn.version != MQTT_5:
        conn.close("storage full: cannot accept QoS 1/2 messages", None)
        return
    reason = {P.REASON_STRING: "storage full"} if conn.problem_information else {}
    ack = Puback(packet_id, RC.QUOTA_EXCEEDED, reason) if qos == 1 else Pubrec(packet_id, RC.QUOTA_EXCEEDED, reason)
    conn.send_packet(ack)


def handle_pubrel(conn: Connection, packet: Pubrel) -> None:
    session = conn.active_session
    packet_id = packet.packet_id
    if packet_id not in session.inbound_qos2:
        conn.send_packet(Pubcomp(packet_id, RC.PACKET_IDENTIFIER_NOT_FOUND))
        return
    session.inbound_qos2.discard(packet_id)
    if conn.inbound_unacked > 0:
        conn.inbound_unacked -= 1
    if session.persistent:
        conn.engine.storage.remove_inbound_qos2(conn.client_id, packet_id)
        # The client may reuse the id after PUBCOMP: the removal must be on disk first, or
        # after a crash a new message with this id would be taken for a re-send.
        conn.send_packet(Pubcomp(packet_id), after_commit=True)
    else:
        conn.send_packet(Pubcomp(packet_id))
