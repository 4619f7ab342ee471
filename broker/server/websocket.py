"""MQTT over WebSockets (RFC 6455, MQTT 5 chapter 6), as browsers and mosquitto speak it.

The HTTP upgrade and the frames are handled by the Sans-I/O layer of the ``websockets``
library (``websockets.server.ServerProtocol``): bytes in, events and bytes out, no event
loop of its own, so this module stays an asyncio edge like ``transport.py`` and the core's
``Connection`` never sees a frame. ``websockets`` was chosen over ``wsproto`` because its
frame parser is about three times faster on the small frames MQTT clients send (one packet
per frame; masking in C), and it enforces the message size limit across fragments, answers
pings and runs the closing handshake by itself.

MQTT is a byte stream here: the payloads of all the binary frames of one read go to the
connection in one call, so a packet split across frames or several packets in one frame
need nothing special. A ``wss`` listener is this protocol on a TLS server socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import cast

from websockets.datastructures import Headers
from websockets.exceptions import SecurityError
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from broker.config import MAX_PACKET_SIZE_LIMIT
from broker.core.connection import Connection
from broker.core.engine import Engine
from broker.core.transport import ListenerInfo
from broker.server.admission import Admission
from broker.server.transport import StreamTransport

log = logging.getLogger("broker")

# The subprotocols MQTT clients offer, in order of preference: "mqtt" is MQTT 3.1.1 and 5
# (MQTT 5 s6.0), "mqttv3.1" what MQTT 3.1-era clients (old Paho JavaScript) send.
SUBPROTOCOLS = [Subprotocol("mqtt"), Subprotocol("mqttv3.1")]
MAX_REQUEST_HEAD = 16 * 1024  # bytes of HTTP request line and headers before 431


def http_response(status: int, message: str) -> bytes:
    """A plain-text HTTP/1.1 error for requests too broken for the WebSocket library to answer."""
    body = (message + "\n").encode("utf-8")
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii") + body


class HandshakeRefused(Exception):
    """An upgrade request we answer with an HTTP error instead of 101."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = list(headers)


def _tokens(headers: Headers, name: str) -> list[str]:
    """The comma-separated values of every ``name`` header."""
    return [
        token.strip() for value in headers.get_all(name) for token in value.split(",") if token.strip()
    ]


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _describe(exc: BaseException) -> str:
    """An exception with its causes, as the HTTP error body says it."""
    text = str(exc)
    while exc.__cause__ is not None:
        exc = exc.__cause__
        text += f": {exc}"
    return text


class WebSocketTransport(StreamTransport):
    """``Transport`` whose bytes travel as binary WebSocket messages.

    Closing sends a Close frame and waits, within the linger limits of the stream, for the
    client's Close before the TCP connection goes (the WebSocket closing handshake).
    """

    __slots__ = ("ws",)

    def __init__(self, transport: asyncio.Transport, listener: ListenerInfo, ws: ServerProtocol) -> None:
        super().__init__(transport, listener)
        self.ws = ws

    def write(self, data: bytes) -> None:
        ws = self.ws
        if ws.state is State.OPEN:
            ws.send_binary(data)
            self.send_pending()

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))  # one frame, one system call

    def send_pending(self) -> None:
        """What the WebSocket protocol has to send; its end-of-stream marker closes our side."""
        for data in self.ws.data_to_send():
            if data:
                self._transport.write(data)
            elif self.lingering:
                self.end_linger()  # the client answered our Close: the handshake is complete
            else:
                # The closing handshake is done (or failed) on our side: shut down writing and
                # read what the client still sends until it closes, for a bounded time.
                super().close(linger=True)

    def close(self, linger: bool = False) -> None:
        # The closing handshake is the WebSocket way to make sure the client read
        # everything, so it is done whether or not the core asked for a linger.
        self.close_websocket(CloseCode.NORMAL_CLOSURE)

    def close_websocket(self, code: int, reason: str = "") -> None:
        if self._transport.is_closing() or self.lingering:
            return
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self.send_pending()
            super().close(linger=True)  # wait for the client's Close, bounded
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
        admission: Admission | None = None,
    ) -> None:
        self.engine = engine
        self.admission = admission  # connection limits, counted from the upgrade on
        self.address: str | None = None  # set while this connection counts in ``admission``
        self.peername: object = None  # the socket's peer address, as asyncio gives it
        self.listener = listener
        self.path = path
        # No message needs to be larger than the largest packet the broker accepts.
        self.max_message_size = min(max_message_size, engine.config.max_packet_size)
        self.handshake_timeout = handshake_timeout
        self.allowed_origins = (
            None if allowed_origins is None else {_normalize_origin(o) for o in allowed_origins}
        )
        self.stream: WebSocketTransport | None = None
        self.connection: Connection | None = None
        self.upgraded = False
        self.request_size = 0  # bytes received before the upgrade
        self.timer: asyncio.TimerHandle | None = None

    # ---- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (TCP_NODELAY: set by asyncio and uvloop on every TCP transport, see transport.py)
        self.peername = transport.get_extra_info("peername")
        ws = ServerProtocol(subprotocols=SUBPROTOCOLS, max_size=self.max_message_size)
        self.stream = WebSocketTransport(cast(asyncio.Transport, transport), self.listener, ws)
        self.timer = asyncio.get_running_loop().call_later(self.handshake_timeout, self.handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        stream = cast(WebSocketTransport, self.stream)
        if stream.lingering:
            stream.discard(len(data))
            if stream.lingering and stream.ws.state is State.CLOSING:
                stream.ws.receive_data(data)  # waiting for the client's Close
                stream.ws.events_received()
                self.after_receive()
            return
        if self.upgraded:
            stream.ws.receive_data(data)
            self.handle_frames(cast("list[Frame]", stream.ws.events_received()))
        else:
            self.request_received(data)

    def eof_received(self) -> bool | None:
        stream = self.stream
        if stream is not None and stream.lingering:
            stream.end_linger()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timer()
        if self.stream is not None:
            self.stream.transport_lost()
        self.lose_connection(exc)

    def resume_writing(self) -> None:
        if self.connection is not None:
            self.connection.output_drained()  # publishers waiting for this client may go on

    def lose_connection(self, exc: Exception | None = None) -> None:
        """The client is gone for the core (its will is due unless it sent DISCONNECT)."""
        if self.admission is not None and self.address is not None:
            self.admission.release(self.address or None)
            self.address = None
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
        if self.upgraded:
            return
        self.refuse(HandshakeRefused(408, f"no WebSocket upgrade within {self.handshake_timeout:g} s"))

    def request_received(self, data: bytes) -> None:
        stream = cast(WebSocketTransport, self.stream)
        ws = stream.ws
        self.request_size += len(data)
        ws.receive_data(data)
        events = ws.events_received()
        if not events:
            if ws.handshake_exc is not None:  # not an HTTP request it can read
                cause = ws.handshake_exc.__cause__
                status = 431 if isinstance(cause, SecurityError) else 400
                self.refuse(HandshakeRefused(status, f"bad HTTP request: {_describe(ws.handshake_exc)}"))
            elif self.request_size > MAX_REQUEST_HEAD:
                self.refuse(HandshakeRefused(431, f"bad HTTP request: the request head is over {MAX_REQUEST_HEAD} bytes"))
            return
        request = cast(Request, events[0])
        try:
            self.check_request(request)
        except HandshakeRefused as refused:
            self.refuse(refused)
            return
        response = ws.accept(request)  # checks the WebSocket headers, picks the subprotocol
        if response.status_code != 101:
            body = (response.body or b"").decode("utf-8", "replace").strip()
            self.refuse(HandshakeRefused(response.status_code, body.split("\n", 1)[0]), response)
            return
        ws.send_response(response)
        self.upgraded = True
        self.cancel_timer()
        stream.send_pending()
        log.debug("websocket connection from %s upgraded (subprotocol %s)", stream.peer, ws.subprotocol)
        self.connection = connection = Connection(self.engine, stream)
        if self.admission is not None:
            self.address = self.admission.admit_connection(connection, self.peername)
        # Frames the client sent right behind its request were parsed with it.
        self.handle_frames(cast("list[Frame]", events[1:]))

    def check_request(self, request: Request) -> None:
        """What the library leaves to us: path, Host, version, Origin, and an MQTT subprotocol."""
        headers = request.headers
        head_size = len(request.path) + sum(len(k) + len(v) + 4 for k, v in headers.raw_items()) + 16
        if head_size > MAX_REQUEST_HEAD:
            raise HandshakeRefused(431, f"bad HTTP request: the request head is over {MAX_REQUEST_HEAD} bytes")
        if request.path.split("?", 1)[0] != self.path:
            raise HandshakeRefused(404, f"no MQTT WebSocket endpoint at {request.path}: it is at {self.path}")
        if "websocket" not in (token.lower() for token in _tokens(headers, "Upgrade")):
            raise HandshakeRefused(
                426,
                f"this is an MQTT over WebSocket endpoint: connect with a WebSocket client to {self.path}",
                [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            )
        if "Host" not in headers:
            raise HandshakeRefused(400, "bad WebSocket upgrade request: missing Host header")
        version = headers.get("Sec-WebSocket-Version")
        if version is None:
            raise HandshakeRefused(400, "bad WebSocket upgrade request: missing Sec-WebSocket-Version header")
        if version != "13":
            raise HandshakeRefused(
                426, f"unsupported Sec-WebSocket-Version {version}: use 13", [("Sec-WebSocket-Version", "13")]
            )
        origin = headers.get("Origin")
        if self.allowed_origins is not None and origin is not None:
            if _normalize_origin(origin) not in self.allowed_origins:
                raise HandshakeRefused(403, f"origin {origin} is not allowed on this listener")
        offered = _tokens(headers, "Sec-WebSocket-Protocol")
        if not any(name in offered for name in SUBPROTOCOLS):
            raise HandshakeRefused(
                400,
                "the client must offer the WebSocket subprotocol 'mqtt' (Sec-WebSocket-Protocol: mqtt)"
                + (f"; it offered {', '.join(offered)}" if offered else ""),
            )

    def refuse(self, refused: HandshakeRefused, response: Response | None = None) -> None:
        """Answer with an HTTP error (the library's ``response`` if it made one) and close."""
        self.cancel_timer()
        stream = cast(WebSocketTransport, self.stream)
        ws = stream.ws
        log.info("websocket handshake from %s refused: %d %s", stream.peer, refused.status, refused)
        if response is None and ws.handshake_exc is None:
            response = ws.reject(refused.status, f"{refused}\n")
            for name, value in refused.headers:
                response.headers[name] = value
        if response is not None:
            ws.send_response(response)  # the response, then the end of the stream
            stream.send_pending()
        else:  # the library gave up on the request and has ended the stream already
            stream.refuse(http_response(refused.status, str(refused)))

    # ---- frames -------------------------------------------------------------------------

    def handle_frames(self, events: Iterable[Frame]) -> None:
        stream = cast(WebSocketTransport, self.stream)
        # The payloads of all the frames in this read go to the connection in one call (one
        # packet per frame is what clients send): as cheap as TCP reads for the codec.
        pending: list[bytes | bytearray | memoryview] = []
        for event in events:
            opcode = event.opcode
            if opcode is Opcode.BINARY or opcode is Opcode.CONT:
                pending.append(event.data)
            elif opcode is Opcode.TEXT:
                self.feed(pending)
                pending = []
                log.info("websocket client %s sent a text frame: closing", stream.peer)
                stream.ws.fail(CloseCode.UNSUPPORTED_DATA, "MQTT needs binary frames")
                break
            # PING is answered by the library; PONG needs nothing; CLOSE is handled below.
        self.feed(pending)
        self.after_receive()

    def feed(self, chunks: list[bytes | bytearray | memoryview]) -> None:
        """MQTT bytes to the connection, unless it is closing (then the client is no longer read)."""
        connection = self.connection
        if not chunks or connection is None or cast(WebSocketTransport, self.stream).lingering:
            return
        # bytes() of a bytes object is that object: no copy for the usual single frame.
        connection.data_received(bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks))

    def after_receive(self) -> None:
        """Send what the library answered (pongs, a Close); a closing WebSocket loses the client."""
        stream = cast(WebSocketTransport, self.stream)
        ws = stream.ws
        if ws.state is not State.OPEN and self.connection is not None:
            error = ws.parser_exc
            if error is not None:
                log.info("websocket client %s: %s (close code %s): closing", stream.peer, error, ws.close_code)
            self.lose_connection()
        stream.send_pending()
