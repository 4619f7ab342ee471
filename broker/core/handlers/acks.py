"""PUBACK, PUBREC and PUBCOMP from a client: the acknowledgements of what we delivered."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.protocol import reason_codes as RC
from broker.protocol.packets import Puback, Pubcomp, Pubrec

if TYPE_CHECKING:
    from broker.core.connection import Connection


def handle_puback(conn: Connection, packet: Puback) -> None:
    conn.active_session.on_puback(packet.packet_id)


def handle_pubrec(conn: Connection, packet: Pubrec) -> None:
    if not conn.active_session.on_pubrec(packet.packet_id, packet.reason_code):
        conn.send_pubrel(packet.packet_id, RC.PACKET_IDENTIFIER_NOT_FOUND)


def handle_pubcomp(conn: Connection, packet: Pubcomp) -> None:
    conn.active_session.on_pubcomp(packet.packet_id)
