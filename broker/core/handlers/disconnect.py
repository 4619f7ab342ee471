"""DISCONNECT from a client: a normal end (no will) unless v5 asks for the will; expiry update."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.protocol import properties as P
from broker.protocol import reason_codes as RC
from broker.protocol.errors import ProtocolError
from broker.protocol.packets import MQTT_5, Disconnect

if TYPE_CHECKING:
    from broker.core.connection import Connection


def handle_disconnect(conn: Connection, packet: Disconnect) -> None:
    session = conn.active_session
    if conn.version == MQTT_5:
        new_expiry = packet.properties.get(P.SESSION_EXPIRY_INTERVAL)
        if new_expiry is not None:
            if session.expiry_interval == 0 and new_expiry != 0:
                raise ProtocolError("session expiry set in DISCONNECT after 0 in CONNECT", RC.PROTOCOL_ERROR)
            conn.engine.lifecycle.set_expiry(session, new_expiry)
        if packet.reason_code == RC.DISCONNECT_WITH_WILL:
            conn.close("disconnected with will", None)
            return
    conn.will = None
    conn.disconnected_cleanly = True
    conn.close("disconnected", None)
