"""Server-side TLS over an asyncio TCP connection, with the ssl module's ``MemoryBIO`` and ``SSLObject``.

asyncio's own TLS layer (``create_server(ssl=...)``, ``start_tls``) gives every
connection a 256 KiB read buffer, zero-filled and so resident: an idle TLS client
cost the broker about 240 KiB, where mosquitto needs about 14 KiB. Here the TLS
state of a connection is OpenSSL's (which releases its buffers while idle) and
two memory BIOs fed at most ``BIO_SLICE`` bytes at a time (a BIO keeps the largest
buffer it ever held), and plaintext is read in the chunks OpenSSL returns.

``TLSServerProtocol`` sits on the TCP connection: it runs the handshake (with a
deadline, reporting the outcome to its listener), then creates the MQTT or
WebSocket protocol and hands it a ``TLSTransport``, which looks like any asyncio
stream transport to it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

from broker.server.transport import describe_peer

READ_SIZE = 64 * 1024  # asked of SSLObject.read; OpenSSL returns at most one record (16 KiB)
# Bytes put into a memory BIO at a time. A BIO keeps the largest buffer it ever held: fed a
# 256 KiB read at once, it would hold 256 KiB for the rest of the connection's life.
BIO_SLICE = 16 * 1024


class HandshakeObserver:
    """What a listener wants to know about each handshake (counts and log lines)."""

    def handshake_completed(self, peer: str) -> None: ...

    def handshake_failed(self, peer: str, reason: str) -> None: ...


class TLSServerProtocol(asyncio.Protocol):
    """One TLS connection's TCP side: handshake, then decryption into the application protocol."""

    __slots__ = (
        "context", "make_app", "handshake_timeout", "observer", "raw", "peer", "incoming", "outgoing",
        "sslobj", "app", "app_transport", "timer", "failed", "read_paused", "unfed", "ended",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        make_app: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
        observer: HandshakeObserver,
    ) -> None:
        self.context = context
        self.make_app = make_app
        self.handshake_timeout = handshake_timeout
        self.observer = observer
        self.raw: asyncio.Transport | None = None
        self.peer = "unknown"
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj: ssl.SSLObject | None = None
        self.app: asyncio.Protocol | None = None
        self.app_transport: TLSTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.failed = False
        self.read_paused = False
        self.unfed: memoryview | None = None  # received, not yet in the incoming BIO (while paused)
        self.ended = False  # the client's close_notify arrived: nothing more to read

    # ---- the TCP side ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not derive from asyncio.Transport: no isinstance check).
        raw = cast(asyncio.Transport, transport)
        self.raw = raw
        # (TCP_NODELAY: set by asyncio and uvloop on every TCP transport, see transport.py)
        self.peer = describe_peer(raw)
        self.sslobj = self.context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.timer = asyncio.get_running_loop().call_later(self.handshake_timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self.failed or (self.app_transport is not None and self.app_transport.closing):
            return
        if self.unfed is None:
            self.unfed = memoryview(data)
        else:  # rare: bytes already on their way when the application paused reading
            self.unfed = memoryview(self.unfed.tobytes() + data)
        self.feed()

    def feed(self) -> None:
        """Move received bytes into OpenSSL a slice at a time, handshaking or delivering as they go."""
        while self.unfed is not None:
            if self.failed or self.ended or (self.app is not None and self.read_paused):
                return
            piece, rest = self.unfed[:BIO_SLICE], self.unfed[BIO_SLICE:]
            self.unfed = rest if len(rest) else None
            self.incoming.write(piece)
            if self.app is None:
                self._handshake()
                if self.app is None:
                    continue
            self.deliver()

    def eof_received(self) -> bool | None:
        if self.app is None:
            self._fail("closed by the client during the handshake")
            return None
        return self.app.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.app is not None:
            app, self.app = self.app, None
            app.connection_lost(exc)
        elif not self.failed:
            self._fail("closed by the client during the handshake", close=False)

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # ---- handshake -------------------------------------------------------------------

    def _handshake(self) -> None:
        assert self.sslobj is not None
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
            return
        except ssl.SSLError as exc:
            self.flush()  # the alert that tells the client why
            reason = exc.reason or str(exc)
            if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
                reason = f"{reason} ({exc.verify_message})"  # "certificate revoked", "unable to get ..."
            self._fail(reason)
            return
        self.flush()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.observer.handshake_completed(self.peer)
        self.app_transport = TLSTransport(self)
        self.app = self.make_app()
        self.app.connection_made(self.app_transport)

    def _timed_out(self) -> None:
        self.timer = None
        if self.app is None and not self.failed:
            self._fail(f"no TLS handshake within {self.handshake_timeout:g} s")

    def _fail(self, reason: str, close: bool = True) -> None:
        self.failed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.observer.handshake_failed(self.peer, reason)
        if close and self.raw is not None and not self.raw.is_closing():
            self.raw.close()  # after the alert in its buffer is sent

    # ---- records in and out ------------------------------------------------------------

    def deliver(self) -> None:
        """Hand the application every byte of plaintext OpenSSL has, unless it paused reading."""
        sslobj = self.sslobj
        assert sslobj is not None
        while not self.read_paused and not self.ended and self.app is not None:
            try:
                chunk = sslobj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLError:
                if self.raw is not None:
                    self.raw.abort()
                break
            if not chunk:  # close_notify: the client's end of the stream, told to the application once
                self.ended = True
                if not self.app.eof_received() and self.app_transport is not None:
                    self.app_transport.close()
                break
            self.app.data_received(chunk)
            if self.app_transport is not None and self.app_transport.closing:
                break
        if self.outgoing.pending:
            self.flush()

    def resume(self) -> None:
        if self.app is not None and not self.read_paused:
            self.deliver()
            self.feed()

    def flush(self) -> None:
        if self.outgoing.pending and self.raw is not None and not self.raw.is_closing():
            self.raw.write(self.outgoing.read())


class TLSTransport(asyncio.Transport):
    """What the MQTT or WebSocket protocol writes to on a TLS connection: plaintext in, records out."""

    __slots__ = ("owner", "raw", "sslobj", "closing")

    def __init__(self, owner: TLSServerProtocol) -> None:
        super().__init__()
        self.owner = owner
        assert owner.raw is not None and owner.sslobj is not None
        self.raw = owner.raw
        self.sslobj = owner.sslobj
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            return
        try:
            if len(data) <= BIO_SLICE:
                self.sslobj.write(data)
            else:
                view = memoryview(data)
                for start in range(0, len(view), BIO_SLICE):
                    self.sslobj.write(view[start : start + BIO_SLICE])
                    self.owner.flush()
        except ssl.SSLError:
            self.abort()
            return
        self.owner.flush()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() + self.owner.outgoing.pending

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self.owner.read_paused = True
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        if not self.owner.read_paused:
            return
        self.owner.read_paused = False
        self.raw.resume_reading()
        # What arrived before the pause is still in OpenSSL or not yet fed to it.
        asyncio.get_running_loop().call_soon(self.owner.resume)

    def is_reading(self) -> bool:
        return not self.owner.read_paused and self.raw.is_reading()

    def can_write_eof(self) -> bool:
        return False  # TLS has close_notify, sent by close()

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close")

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        try:
            self.sslobj.unwrap()  # queues close_notify
        except (ssl.SSLError, ValueError):
            pass
        self.owner.flush()
        self.raw.close()

    def abort(self) -> None:
        self.closing = True
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.closing or self.raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.sslobj
        if name == "peercert":
            return self.sslobj.getpeercert()
        if name == "cipher":
            return self.sslobj.cipher()
        return self.raw.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.owner.app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.owner.app is not None
        return self.owner.app
