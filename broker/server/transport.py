"""The asyncio edge of a stream listener (TCP, TLS, Unix socket): bytes in, bytes out.

``MQTTProtocol`` is the asyncio Protocol; ``StreamTransport`` is what the core's
``Connection`` writes to (the ``broker.core.transport.Transport`` interface). No
per-message coroutines: asyncio calls ``data_received`` and the core answers
synchronously.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

from broker.core.connection import Connection
from broker.core.empty import EMPTY_DEQUE
from broker.core.engine import Engine
from broker.core.transport import DEFAULT_LISTENER, ListenerInfo
from broker.server.admission import Admission

# After a final DISCONNECT or refusing CONNACK the client gets this long, and may send this
# much, before the socket is closed: enough for it to read the reason instead of a reset.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20

# asyncio (3.11) copies whatever the socket does not take at once into its own buffer: a
# large PUBLISH would be held twice. Output beyond this many bytes waits in our queue as the
# bytes it already is, and is handed over a slice at a time as the socket drains.
WRITE_SLICE = 64 * 1024


def describe_peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f"[{host}]:{peer[1]}" if ":" in str(host) else f"{host}:{peer[1]}"
    sockname = transport.get_extra_info("sockname")
    if isinstance(sockname, str) and sockname:
        return f"unix:{sockname}"
    return "unknown"


class StreamTransport:
    """``Transport`` over an asyncio stream transport, with a lingering close."""

    __slots__ = ("_transport", "listener", "_peer", "_linger_left", "_linger_timer", "_queued", "_queued_bytes")

    def __init__(self, transport: asyncio.Transport, listener: ListenerInfo) -> None:
        self.listener = listener
        self._attach(transport)

    def _attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        # A TCP peer's "host:port" is made when a log line asks for it (asyncio and uvloop keep
        # the address after the close): not a string kept by every idle connection.
        tcp = isinstance(transport.get_extra_info("peername"), tuple)
        self._peer: str | None = None if tcp else describe_peer(transport)
        self._linger_left: int | None = None  # bytes still accepted and discarded while lingering
        self._linger_timer: asyncio.TimerHandle | None = None
        # Output not yet handed to asyncio; the shared empty deque until a client falls behind.
        self._queued: deque[memoryview] = EMPTY_DEQUE
        self._queued_bytes = 0
        # pause_writing() above WRITE_SLICE buffered, resume_writing() once at or below it.
        transport.set_write_buffer_limits(WRITE_SLICE, WRITE_SLICE)

    @property
    def peer(self) -> str:
        return self._peer or describe_peer(self._transport)

    def write(self, data: bytes) -> None:
        if not self._queued and len(data) <= WRITE_SLICE:
            self._transport.write(data)
            return
        if self._queued is EMPTY_DEQUE:
            self._queued = deque()
        self._queued.append(memoryview(data))
        self._queued_bytes += len(data)
        self.drain()

    def writelines(self, chunks: list[bytes]) -> None:
        if not self._queued and sum(map(len, chunks)) <= WRITE_SLICE:
            self._transport.writelines(chunks)
            return
        # One piece, then slices of it: not one write (and one drain) per packet, which cost
        # a system call per small PUBLISH for a subscriber behind a busy fan-in.
        self.write(b"".join(chunks))

    def drain(self) -> None:
        """Hand queued output to asyncio while its buffer is at most WRITE_SLICE (also on resume_writing)."""
        queued = self._queued
        transport = self._transport
        while queued and transport.get_write_buffer_size() <= WRITE_SLICE and not transport.is_closing():
            view = queued[0]
            piece = view[:WRITE_SLICE]
            if len(piece) == len(view):
                queued.popleft()
            else:
                queued[0] = view[WRITE_SLICE:]
            self._queued_bytes -= len(piece)
            transport.write(piece)

    def _flush_queued(self) -> None:
        """Before a close: everything queued goes to asyncio (which sends it before closing)."""
        while self._queued:
            self._transport.write(self._queued.popleft())
        self._queued_bytes = 0

    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._queued_bytes

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def peer_certificate(self) -> dict[str, Any] | None:
        ssl_object = self._transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        cert = ssl_object.getpeercert()
        return cast("dict[str, Any] | None", cert or None)

    def close(self, linger: bool = False) -> None:
        transport = self._transport
        if transport.is_closing() or self._linger_left is not None:
            return
        self._flush_queued()
        if not linger:
            transport.close()
            return
        # Shut down our side once the output is flushed, keep reading (and discarding) for a
        # while: closing a socket with unread input makes the kernel send a reset, and the
        # client's kernel then throws away the DISCONNECT it has not read yet.
        self._linger_left = LINGER_BYTES
        try:
            transport.resume_reading()
        except RuntimeError:
            pass
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the client reset the connection meanwhile: nothing to wait for
                self._linger_left = None
                transport.close()
                return
        self._linger_timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, self.end_linger)

    @property
    def lingering(self) -> bool:
        return self._linger_left is not None

    def discard(self, size: int) -> None:
        """Input received while lingering: dropped, and the linger ends past its byte budget."""
        left = cast(int, self._linger_left) - size
        self._linger_left = left
        if left < 0:
            self.end_linger()

    def end_linger(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if not self._transport.is_closing():
            self._transport.close()

    def transport_lost(self) -> None:
        """The asyncio transport is gone (its protocol's ``connection_lost``)."""
        self._queued.clear()
        self._queued_bytes = 0
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None


class MQTTProtocol(StreamTransport, asyncio.Protocol):
    """The asyncio Protocol of an MQTT stream connection, and the ``Transport`` its core
    ``Connection`` writes to: one object per connection, not two (idle connections by the
    thousand: issue 13). The stream half is set up when asyncio hands over its transport."""

    __slots__ = ("engine", "connection", "admission", "address")

    def __init__(
        self, engine: Engine, listener: ListenerInfo = DEFAULT_LISTENER, admission: Admission | None = None
    ) -> None:
        self.engine = engine
        self.listener = listener
        self.connection: Connection | None = None
        self.admission = admission
        self.address: str | None = None  # set while this connection counts in ``admission``

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No Nagle delay (MQTT packets are small and answered at once): asyncio and uvloop set
        # TCP_NODELAY on every TCP transport already. Asking for the socket to set it again
        # cost each connection a socket object (uvloop keeps the one it makes).
        self._attach(cast(asyncio.Transport, transport))
        self.connection = connection = Connection(self.engine, self)
        if self.admission is not None:
            self.address = self.admission.admit_connection(connection, transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        # asyncio calls this only between connection_made and connection_lost.
        if self._linger_left is not None:  # lingering
            self.discard(len(data))
            return
        cast(Connection, self.connection).data_received(data)

    def resume_writing(self) -> None:
        self.drain()  # (asyncio calls it only after connection_made)
        if self.connection is not None:
            self.connection.output_drained()

    def eof_received(self) -> bool | None:
        if self.lingering:
            self.end_linger()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admission is not None and self.address is not None:
            self.admission.release(self.address or None)
            self.address = None
        self.transport_lost()
        if self.connection is not None:
            self.connection.connection_lost(exc)
            self.connection = None
