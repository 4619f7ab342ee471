"""One handler per packet type, as mosquitto's ``handle_*.c``: find where a packet is handled
(and where it is authorized) by its file name.

Each handler is ``handle_X(conn, packet)``: it checks the packet, changes the session
through the engine, and answers through ``conn.send_packet``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.core.handlers.acks import handle_puback, handle_pubcomp, handle_pubrec
from broker.core.handlers.auth import handle_auth
from broker.core.handlers.connect import handle_connect
from broker.core.handlers.disconnect import handle_disconnect
from broker.core.handlers.ping import handle_pingreq
from broker.core.handlers.publish import handle_publish, handle_pubrel
from broker.core.handlers.subscribe import handle_subscribe
from broker.core.handlers.unsubscribe import handle_unsubscribe
from broker.protocol import reason_codes as RC
from broker.protocol.errors import ProtocolError
from broker.protocol.packets import (
    Auth,
    Connect,
    Disconnect,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
)

if TYPE_CHECKING:
    from broker.core.connection import Connection
    from broker.protocol.packets import Packet

Handler = Callable[["Connection", Any], None]

# Packets a client may send once connected (the codec lets only CONNECT through first).
HANDLERS: dict[type, Handler] = {
    Publish: handle_publish,
    Puback: handle_puback,
    Pubrec: handle_pubrec,
    Pubrel: handle_pubrel,
    Pubcomp: handle_pubcomp,
    Subscribe: handle_subscribe,
    Unsubscribe: handle_unsubscribe,
    Pingreq: handle_pingreq,
    Disconnect: handle_disconnect,
    Auth: handle_auth,
}


def dispatch(conn: Connection, packet: Packet) -> None:
    """Call the handler of ``packet``'s type; the first packet of a connection is CONNECT."""
    if conn.session is None:
        handle_connect(conn, packet)  # type: ignore[arg-type]  # (the codec guarantees a Connect)
        return
    handler = HANDLERS.get(type(packet))
    if handler is None or type(packet) is Connect:
        raise ProtocolError(f"unexpected {type(packet).__name__} from a client", RC.PROTOCOL_ERROR)
    handler(conn, packet)
