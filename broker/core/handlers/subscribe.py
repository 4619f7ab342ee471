"""SUBSCRIBE: add subscriptions, answer SUBACK, then send the matching retained messages."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from broker.protocol import properties as P
from broker.protocol import reason_codes as RC
from broker.protocol.errors import ProtocolError
from broker.protocol.packets import MQTT_5, Suback, Subscribe
from broker.protocol.topics import is_valid_topic_filter, split_shared
from broker.message import Message

if TYPE_CHECKING:
    from broker.core.connection import Connection

INVALID_FILTER_REASON = "topic filter invalid"
NOT_AUTHORIZED_REASON = "not authorized"

log = logging.getLogger("broker")


def handle_subscribe(conn: Connection, packet: Subscribe) -> None:
    engine = conn.engine
    session = conn.active_session
    v5 = conn.version == MQTT_5
    sub_ids = packet.properties.get(P.SUBSCRIPTION_IDENTIFIER) if v5 else None
    subscription_id = sub_ids[0] if sub_ids else None
    codes: list[int] = []
    retained_to_send: list[tuple[Message, int]] = []
    rights = conn.rights
    for topic_filter, options in packet.subscriptions:
        if not is_valid_topic_filter(topic_filter):
            codes.append(RC.TOPIC_FILTER_INVALID if v5 else RC.V3_SUBACK_FAILURE)
            continue
        group, plain_filter = split_shared(topic_filter)
        if group is not None and options.no_local:
            raise ProtocolError("no local on a shared subscription", RC.PROTOCOL_ERROR)
        if rights is not None and not rights.may_subscribe(plain_filter):
            # AUTH: the filter can match nothing this client may read ($share: its filter).
            log.debug("Denied SUBSCRIBE from %s to '%s'.", conn.client_id, topic_filter)
            codes.append(RC.NOT_AUTHORIZED if v5 else RC.V3_SUBACK_FAILURE)
            continue
        qos = options.qos
        is_new = engine.subscribe(session, topic_filter, options, subscription_id)
        codes.append(qos)
        if group is None and (options.retain_handling == 0 or (options.retain_handling == 1 and is_new)):
            for message in engine.retained_for(topic_filter):
                retained_to_send.append((message, min(qos, message.qos)))
    reason = NOT_AUTHORIZED_REASON if RC.NOT_AUTHORIZED in codes else INVALID_FILTER_REASON
    suback = Suback(packet.packet_id, codes, conn.ack_problem(codes, reason))
    conn.send_packet(suback, after_commit=session.persistent)
    ids = [subscription_id] if subscription_id is not None else []
    for message, qos in retained_to_send:
        session.deliver(message, qos, True, ids)
