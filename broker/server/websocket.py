"""MQTT over WebSockets (RFC 6455, MQTT 5 chapter 6), as browsers and mosquitto speak it.

The HTTP upgrade request is parsed with ``h11`` and the frames with ``wsproto``: both are
sans-I/O libraries of python-hyper, so this module stays an asyncio edge like
``transport.py``: bytes in, events out, the core's ``Connection`` unaware of frames.

MQTT is a byte stream here: the payload of every binary message is fed to the
connection as it arrives, so a packet split across frames or several packets in one
frame need nothing special, and nothing is buffered per frame. A ``wss`` listener is this
protocol on a TLS server socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import cast

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from broker.config import MAX_PACKET_SIZE_LIMIT
from broker.core.connection import Connection
from broker.core.engine import Engine
from broker.core.transport import ListenerInfo
from broker.server.transport import StreamTransport, set_nodelay

log = logging.getLogger("broker")

# The subprotocols MQTT clients offer, in order of preference: "mqtt" is MQTT 3.1.1 and 5
# (MQTT 5 s6.0), "mqttv3.1" what MQTT 3.1-era clients (old Paho JavaScript) send.
SUBPROTOCOLS = ("mqtt", "mqttv3.1")
MAX_REQUEST_HEAD = 16 * 1024  # bytes of HTTP request line and headers before 431
Headers = list[tuple[bytes, bytes]]


def http_response(status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """A complete plain-text HTTP/1.1 error response that closes the connection."""
    body = (message + "\n").encode("utf-8")
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode("ascii")]
    lines += [name + b": " + value for name, value in headers]
    lines += [
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: " + str(len(body)).encode("ascii"),
        b"Connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class HandshakeRefused(Exception):
    """An upgrade request we answer with an HTTP error instead of 101."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


def _header(headers: Headers, name: bytes) -> bytes | None:
    """The values of header ``name`` (lowercase), joined with commas as HTTP allows."""
    values = [value for key, value in headers if key == name]
    return b", ".join(values) if values else None


def _tokens(value: bytes | None) -> list[str]:
    if not value:
        return []
    return [token.strip() for token in value.decode("latin-1").split(",") if token.strip()]


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class WebSocketTransport(StreamTransport):
    """``Transport`` whose bytes travel as binary WebSocket messages.

    Closing sends a Close frame and waits, within the linger limits of the stream, for the
    client's Close before the TCP connection goes (the WebSocket closing handshake).
    """

    __slots__ = ("ws",)

    def __init__(self, transport: asyncio.Transport, listener: ListenerInfo) -> None:
        super().__init__(transport, listener)
        self.ws: WSConnection | None = None  # set once the upgrade is accepted

    def write(self, data: bytes) -> None:
        ws = self.ws
        if ws is not None and ws.state is ConnectionState.OPEN:
            self._transport.write(ws.send(BytesMessage(data=data)))

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))  # one frame, one system call

    def write_raw(self, data: bytes) -> None:
        """Bytes that are not MQTT: the HTTP upgrade answer, a Pong."""
        self._transport.write(data)

    def close(self, linger: bool = False) -> None:
        # The closing handshake is the WebSocket way to make sure the client read
        # everything, so it is done whether or not the core asked for a linger.
        self.close_websocket(CloseReason.NORMAL_CLOSURE)

    def close_websocket(self, code: int, reason: str | None = None) -> None:
        ws = self.ws
        if ws is None or self._transport.is_closing() or self.lingering:
            return
        state = ws.state
        if state is ConnectionState.OPEN:
            self._transport.write(ws.send(CloseConnection(code=code, reason=reason)))
            super().close(linger=True)  # read until the client's Close, bounded
        elif state is ConnectionState.REMOTE_CLOSING:
            self._transport.write(ws.send(CloseConnection(code=code, reason=reason)))
            super().close()
        else:
            super().close()

    def refuse(self, response: bytes) -> None:
        """An HTTP error instead of the upgrade; what the client still sends is read and dropped."""
        self._transport.write(response)
        super().close(linger=True)


class WebSocketProtocol(asyncio.Protocol):
    """One client connection of a WebSocket listener: the HTTP upgrade, then MQTT in frames."""

    def __init__(
        self,
        engine: Engine,
        listener: ListenerInfo,
        path: str = "/mqtt",
        max_message_size: int = MAX_PACKET_SIZE_LIMIT,
        handshake_timeout: float = 10.0,
        allowed_origins: list[str] | None = None,
    ) -> None:
        self.engine = engine
        self.listener = listener
        self.path = path
        # Payload bytes are streamed to the connection, never buffered per message; the limit
        # stops a client that sends an endless message, and no message needs to be larger than
        # the largest packet the broker accepts.
        self.max_message_size = min(max_message_size, engine.config.max_packet_size)
        self.handshake_timeout = handshake_timeout
        self.allowed_origins = (
            None if allowed_origins is None else {_normalize_origin(o) for o in allowed_origins}
        )
        self.stream: WebSocketTransport | None = None
        self.connection: Connection | None = None
        self.http: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD
        )
        self.request_size = 0  # bytes of the HTTP request received so far
        self.message_size = 0  # bytes of the binary message being received so far
        self.timer: asyncio.TimerHandle | None = None

    # ---- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        set_nodelay(transport)
        self.stream = WebSocketTransport(cast(asyncio.Transport, transport), self.listener)
        self.timer = asyncio.get_running_loop().call_later(
            self.handshake_timeout, self.handshake_timed_out
        )

    def data_received(self, data: bytes) -> None:
        stream = cast(WebSocketTransport, self.stream)
        if stream.lingering:
            stream.discard(len(data))
            ws = stream.ws
            if ws is not None and stream.lingering and ws.state is ConnectionState.LOCAL_CLOSING:
                self.frames_received(data)  # waiting for the client's Close
            return
        if self.http is not None:
            self.request_received(data)
        else:
            self.frames_received(data)

    def eof_received(self) -> bool | None:
        stream = self.stream
        if stream is not None and stream.lingering:
            stream.end_linger()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timer()
        if self.stream is not None:
            self.stream.connection_lost()
        if self.connection is not None:
            self.connection.connection_lost(exc)
            self.connection = None

    # ---- the HTTP upgrade ---------------------------------------------------------------

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def handshake_timed_out(self) -> None:
        self.timer = None
        if self.http is None:
            return
        self.http = None
        stream = cast(WebSocketTransport, self.stream)
        log.info("websocket handshake from %s timed out after %g s", stream.peer, self.handshake_timeout)
        stream.refuse(http_response(408, f"no WebSocket upgrade within {self.handshake_timeout:g} s"))

    def request_received(self, data: bytes) -> None:
        http = cast(h11.Connection, self.http)
        stream = cast(WebSocketTransport, self.stream)
        self.request_size += len(data)
        try:
            http.receive_data(data)
            event = http.next_event()
            head_size = self.request_size - len(http.trailing_data[0])
            if head_size > MAX_REQUEST_HEAD:
                raise HandshakeRefused(431, f"bad HTTP request: the request head is over {MAX_REQUEST_HEAD} bytes")
            if event is h11.NEED_DATA:
                return
            if not isinstance(event, h11.Request):
                raise HandshakeRefused(400, "expected an HTTP request")
            subprotocol = self.check_request(event)
            ws = WSConnection(ConnectionType.SERVER)
            # The request is parsed already: wsproto checks the WebSocket headers (version,
            # key, ...) and computes the answer.
            ws.initiate_upgrade_connection(list(event.headers), event.target)
            for ws_event in ws.events():
                if not isinstance(ws_event, Request):  # pragma: no cover - wsproto yields a Request
                    raise HandshakeRefused(400, "not a WebSocket upgrade request")
            response = ws.send(AcceptConnection(subprotocol=subprotocol))
        except h11.RemoteProtocolError as exc:
            self.refuse(HandshakeRefused(exc.error_status_hint, f"bad HTTP request: {exc}"))
            return
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            headers = list(hint.headers) if isinstance(hint, RejectConnection) else []
            self.refuse(HandshakeRefused(status, f"bad WebSocket upgrade request: {exc}", headers))
            return
        except (HandshakeRefused, h11.LocalProtocolError, LocalProtocolError) as exc:
            self.refuse(exc if isinstance(exc, HandshakeRefused) else HandshakeRefused(400, str(exc)))
            return
        trailing, _ = http.trailing_data  # frames the client sent right behind its request
        self.http = None
        self.cancel_timer()
        stream.ws = ws
        stream.write_raw(response)
        log.debug("websocket connection from %s upgraded (subprotocol %s)", stream.peer, subprotocol)
        self.connection = Connection(self.engine, stream)
        if trailing:
            self.frames_received(trailing)

    def check_request(self, request: h11.Request) -> str:
        """The subprotocol to answer with, or ``HandshakeRefused`` saying what is wrong."""
        if request.method != b"GET":
            raise HandshakeRefused(405, "only GET can upgrade to a WebSocket", [(b"Allow", b"GET")])
        target = request.target.decode("latin-1")
        if target.split("?", 1)[0] != self.path:
            raise HandshakeRefused(404, f"no MQTT WebSocket endpoint at {target}: it is at {self.path}")
        headers: Headers = list(request.headers)
        if "websocket" not in (token.lower() for token in _tokens(_header(headers, b"upgrade"))):
            raise HandshakeRefused(
                426,
                f"this is an MQTT over WebSocket endpoint: connect with a WebSocket client to {self.path}",
                [(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Version", b"13")],
            )
        origin = _header(headers, b"origin")
        if self.allowed_origins is not None and origin is not None:
            text = origin.decode("latin-1")
            if _normalize_origin(text) not in self.allowed_origins:
                raise HandshakeRefused(403, f"origin {text} is not allowed on this listener")
        offered = _tokens(_header(headers, b"sec-websocket-protocol"))
        for name in SUBPROTOCOLS:
            if name in offered:
                return name
        raise HandshakeRefused(
            400,
            "the client must offer the WebSocket subprotocol 'mqtt' (Sec-WebSocket-Protocol: mqtt)"
            + (f"; it offered {', '.join(offered)}" if offered else ""),
        )

    def refuse(self, refused: HandshakeRefused) -> None:
        self.http = None
        self.cancel_timer()
        stream = cast(WebSocketTransport, self.stream)
        log.info("websocket handshake from %s refused: %d %s", stream.peer, refused.status, refused)
        stream.refuse(http_response(refused.status, str(refused), refused.headers))

    # ---- frames -------------------------------------------------------------------------

    def frames_received(self, data: bytes) -> None:
        stream = cast(WebSocketTransport, self.stream)
        ws = cast(WSConnection, stream.ws)
        try:
            ws.receive_data(data)
        except LocalProtocolError:  # data after the closing handshake completed
            return
        for event in ws.events():
            if isinstance(event, BytesMessage):
                if stream.lingering:
                    continue  # closing: the client's data is no longer read
                self.message_size += len(event.data)
                if self.message_size > self.max_message_size:
                    log.info(
                        "websocket client %s sent a message over %d bytes: closing",
                        stream.peer, self.max_message_size,
                    )
                    self.close_connection(
                        CloseReason.MESSAGE_TOO_BIG, f"message larger than {self.max_message_size} bytes"
                    )
                    return
                if event.message_finished:
                    self.message_size = 0
                cast(Connection, self.connection).data_received(bytes(event.data))
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    stream.write_raw(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_received(event, ws.state)
                return
            elif isinstance(event, TextMessage):
                log.info("websocket client %s sent a text frame: closing", stream.peer)
                self.close_connection(CloseReason.UNSUPPORTED_DATA, "MQTT needs binary frames")
                return
            # Pong: nothing to do, the MQTT keepalive watches the client.

    def close_received(self, event: CloseConnection, state: ConnectionState) -> None:
        stream = cast(WebSocketTransport, self.stream)
        if state is ConnectionState.REMOTE_CLOSING:
            # The client closes: answer with its code, then close the TCP connection.
            stream.close_websocket(event.code)
        elif state is ConnectionState.CLOSED:
            stream.end_linger()  # the client answered our Close
        else:
            # wsproto found a framing error (unmasked frame, bad opcode, ...): say why and go.
            log.info("websocket client %s: %s (%d): closing", stream.peer, event.reason, event.code)
            self.close_connection(event.code, event.reason)
            return
        if self.connection is not None:
            self.connection.connection_lost(None)
            self.connection = None

    def close_connection(self, code: int, reason: str | None) -> None:
        """Close for a WebSocket-level reason: the Close frame carries it, the core loses the client."""
        stream = cast(WebSocketTransport, self.stream)
        stream.close_websocket(code, reason)
        if self.connection is not None:
            self.connection.connection_lost(None)
            self.connection = None
