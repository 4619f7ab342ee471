"""AUTH: MQTT 5 enhanced authentication. No method is offered, so an AUTH is a protocol error."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.protocol import reason_codes as RC
from broker.protocol.errors import ProtocolError
from broker.protocol.packets import Auth

if TYPE_CHECKING:
    from broker.core.connection import Connection


def handle_auth(conn: Connection, packet: Auth) -> None:
    # No enhanced authentication method was agreed in CONNECT (one with a method is refused
    # there with 0x8C Bad authentication method).
    raise ProtocolError("AUTH without an authentication method", RC.PROTOCOL_ERROR)
