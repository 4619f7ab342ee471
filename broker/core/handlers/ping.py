"""PINGREQ: the client is alive (``Connection.data_received`` noted the time); PINGRESP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.core import packetlog
from broker.protocol.packets import Pingreq

if TYPE_CHECKING:
    from broker.core.connection import Connection

_PINGRESP = b"\xd0\x00"


def handle_pingreq(conn: Connection, packet: Pingreq) -> None:
    if conn.trace:
        packetlog.sending_pingresp(conn)
    conn.send(_PINGRESP)
