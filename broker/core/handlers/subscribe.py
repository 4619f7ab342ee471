"""SUBSCRIBE: add subscriptions, answer SUBACK, then send the matching retained messages."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from broker.core.retained_delivery import RetainedSender
from broker.protocol import properties as P
from broker.protocol import reason_codes as RC
from broker.protocol.errors import ProtocolError
from broker.protocol.packets import MQTT_5, Suback, Subscribe
from broker.protocol.topics import split_shared

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
    # Identical filters in one SUBSCRIBE: the last one counts, and its retained messages go once.
    retained_filters: dict[str, tuple[str, int, int | None]] = {}
    new_here: set[str] = set()
    rights = conn.rights
    for topic_filter, options in packet.subscriptions:
        if engine.topic_limits.filter_problem(topic_filter) is not None:
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
        if engine.subscribe(session, topic_filter, options, subscription_id):
            new_here.add(topic_filter)
        codes.append(qos)
        is_new = topic_filter in new_here
        retained_filters.pop(topic_filter, None)  # keeps SUBSCRIBE order for the last one
        if group is None and (options.retain_handling == 0 or (options.retain_handling == 1 and is_new)):
            retained_filters[topic_filter] = (topic_filter, qos, subscription_id)
    reason = NOT_AUTHORIZED_REASON if RC.NOT_AUTHORIZED in codes else INVALID_FILTER_REASON
    suback = Suback(packet.packet_id, codes, conn.ack_problem(codes, reason))
    conn.send_packet(suback, after_commit=session.persistent)
    if retained_filters:
        # A page at a time while the client keeps up (retained_delivery.py), not all at once.
        RetainedSender(conn, session, list(retained_filters.values())).start()
