"""asyncio Protocol that hands bytes to a core ``Connection``: no per-message coroutines."""

from __future__ import annotations

import asyncio
from typing import cast

from broker.core.connection import Connection
from broker.core.engine import Engine


class MQTTProtocol(asyncio.Protocol):
    __slots__ = ("engine", "connection")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.connection = Connection(self.engine, transport)

    def data_received(self, data: bytes) -> None:
        # asyncio calls this only between connection_made and connection_lost: it is set.
        cast(Connection, self.connection).data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connection is not None:
            self.connection.connection_lost(exc)
            self.connection = None
