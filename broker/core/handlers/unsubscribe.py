"""UNSUBSCRIBE: remove subscriptions and answer UNSUBACK (v5: a reason code per filter)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.core.handlers.subscribe import INVALID_FILTER_REASON
from broker.protocol import reason_codes as RC
from broker.protocol.packets import MQTT_5, Unsuback, Unsubscribe
from broker.protocol.topics import is_valid_topic_filter

if TYPE_CHECKING:
    from broker.core.connection import Connection


def handle_unsubscribe(conn: Connection, packet: Unsubscribe) -> None:
    session = conn.active_session
    codes = []
    for topic_filter in packet.topic_filters:
        if not is_valid_topic_filter(topic_filter):
            codes.append(RC.TOPIC_FILTER_INVALID)
        elif conn.engine.unsubscribe(session, topic_filter):
            codes.append(RC.SUCCESS)
        else:
            codes.append(RC.NO_SUBSCRIPTION_EXISTED)
    v5 = conn.version == MQTT_5
    ack = Unsuback(packet.packet_id, codes if v5 else [], conn.ack_problem(codes, INVALID_FILTER_REASON))
    conn.send_packet(ack, after_commit=session.persistent)
