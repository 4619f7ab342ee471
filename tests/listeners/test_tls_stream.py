"""``TLSServerProtocol``/``TLSTransport`` as a transport: bytes both ways, flow control, close.

A recording application protocol sits behind the TLS layer on a real socket; the
client is Python's own TLS stack (``asyncio.open_connection(ssl=...)``).
"""

from __future__ import annotations

import asyncio
import ssl

from broker.server.tls import load_server_tls
from broker.config import ListenerConfig
from broker.server.tls_stream import HandshakeObserver, TLSServerProtocol, TLSTransport

from .conftest import PKI


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: TLSTransport | None = None
        self.data = bytearray()
        self.eof = False
        self.lost = asyncio.get_running_loop().create_future()
        self.arrived = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TLSTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.arrived.set()

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait_for(self, size: int) -> None:
        while len(self.data) < size:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)


class Counts(HandshakeObserver):
    def __init__(self) -> None:
        self.completed = 0
        self.failures: list[str] = []

    def handshake_completed(self, peer: str) -> None:
        self.completed += 1

    def handshake_failed(self, peer: str, reason: str) -> None:
        self.failures.append(reason)


def test_bytes_flow_control_and_close(pki: PKI) -> None:
    settings = ListenerConfig(port=0, certfile=str(pki.server_cert), keyfile=str(pki.server_key))
    context = load_server_tls(settings).context

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        apps: list[Recorder] = []
        counts = Counts()

        def make_app() -> asyncio.Protocol:
            apps.append(Recorder())
            return apps[-1]

        server = await loop.create_server(
            lambda: TLSServerProtocol(context, make_app, 5.0, counts), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=pki.client_context(with_certificate=False), server_hostname="127.0.0.1"
        )
        first = bytes(range(256)) * 400  # 100 KiB: several TLS records
        writer.write(first)
        while not apps:
            await asyncio.sleep(0.01)
        app = apps[0]
        await app.wait_for(len(first))
        assert bytes(app.data) == first
        assert counts.completed == 1 and not counts.failures
        assert app.transport is not None
        assert app.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        assert app.transport.get_extra_info("peername")[0] == "127.0.0.1"

        # Paused: nothing is delivered, however much arrives; resumed: all of it, in order.
        app.transport.pause_reading()
        second = b"second" * 10000
        writer.write(second)
        await writer.drain()
        await asyncio.sleep(0.3)
        assert len(app.data) == len(first)
        app.transport.resume_reading()
        await app.wait_for(len(first) + len(second))
        assert bytes(app.data) == first + second

        # Plaintext out, of any size, through writes and writelines.
        reply = b"x" * 200_000
        app.transport.write(reply[:1000])
        app.transport.writelines([reply[1000:100_000], reply[100_000:]])
        assert await asyncio.wait_for(reader.readexactly(len(reply)), 5) == reply

        # close(): close_notify, then the client sees the end of the stream.
        app.transport.close()
        assert app.transport.is_closing()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert await asyncio.wait_for(app.lost, 5) is None
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_client_close_reaches_the_application(pki: PKI) -> None:
    settings = ListenerConfig(port=0, certfile=str(pki.server_cert), keyfile=str(pki.server_key))
    context = load_server_tls(settings).context

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        apps: list[Recorder] = []
        server = await loop.create_server(
            lambda: TLSServerProtocol(context, lambda: apps.append(Recorder()) or apps[-1], 5.0, Counts()),
            "127.0.0.1", 0,
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=pki.client_context(with_certificate=False), server_hostname="127.0.0.1"
        )
        writer.write(b"bye")
        await writer.drain()
        while not apps:
            await asyncio.sleep(0.01)
        await apps[0].wait_for(3)
        writer.close()  # close_notify from the client
        await asyncio.wait_for(apps[0].lost, 5)
        assert apps[0].eof
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_handshake_failure_sends_an_alert(pki: PKI) -> None:
    """A client that does not trust the certificate is told so (an alert), and the failure is counted."""
    settings = ListenerConfig(port=0, certfile=str(pki.server_cert), keyfile=str(pki.server_key))
    context = load_server_tls(settings).context

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        counts = Counts()
        server = await loop.create_server(
            lambda: TLSServerProtocol(context, Recorder, 5.0, counts), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        # Offers only TLS 1.2 ciphers the server does not have: the server answers with an alert.
        client = ssl.create_default_context(cafile=str(pki.ca))
        client.maximum_version = ssl.TLSVersion.TLSv1_2
        client.set_ciphers("AES128-SHA")  # RSA key exchange: impossible with an ECDSA certificate
        try:
            await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="127.0.0.1")
        except ssl.SSLError as exc:
            assert "HANDSHAKE_FAILURE" in str(exc) or "handshake failure" in str(exc).lower(), exc
        else:
            raise AssertionError("the handshake succeeded")
        for _ in range(100):
            if counts.failures:
                break
            await asyncio.sleep(0.02)
        assert counts.completed == 0 and len(counts.failures) == 1
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


class PausingRecorder(Recorder):
    """Pauses reading itself after the first chunk, as the core does under backpressure."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if len(self.data) == len(data):  # the first chunk
            assert self.transport is not None
            self.transport.pause_reading()


def test_pause_inside_data_received_holds_the_rest_of_a_large_read(pki: PKI) -> None:
    """Bytes already received when the application pauses are kept, and delivered in order on resume."""
    settings = ListenerConfig(port=0, certfile=str(pki.server_cert), keyfile=str(pki.server_key))
    context = load_server_tls(settings).context

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        apps: list[PausingRecorder] = []

        def make_app() -> asyncio.Protocol:
            apps.append(PausingRecorder())
            return apps[-1]

        server = await loop.create_server(lambda: TLSServerProtocol(context, make_app, 5.0, Counts()), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=pki.client_context(with_certificate=False), server_hostname="127.0.0.1"
        )
        blob = bytes(range(251)) * 1200  # ~300 KB: many records and several BIO slices
        writer.write(blob)
        await writer.drain()
        while not apps or not apps[0].data:
            await asyncio.sleep(0.01)
        app = apps[0]
        await asyncio.sleep(0.3)
        held = len(app.data)
        assert held < len(blob), "nothing was held back while paused"
        assert app.transport is not None
        app.transport.resume_reading()
        await app.wait_for(len(blob))
        assert bytes(app.data) == blob
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


class HalfOpenRecorder(Recorder):
    """Keeps the connection open after the client's close_notify, and counts how often it is told."""

    eofs = 0

    def eof_received(self) -> bool | None:
        self.eofs += 1
        return True


def test_the_end_of_the_stream_is_told_once(pki: PKI) -> None:
    settings = ListenerConfig(port=0, certfile=str(pki.server_cert), keyfile=str(pki.server_key))
    context = load_server_tls(settings).context

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        apps: list[HalfOpenRecorder] = []

        def make_app() -> asyncio.Protocol:
            apps.append(HalfOpenRecorder())
            return apps[-1]

        server = await loop.create_server(lambda: TLSServerProtocol(context, make_app, 5.0, Counts()), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=pki.client_context(with_certificate=False), server_hostname="127.0.0.1"
        )
        writer.write(b"last words")
        await writer.drain()
        while not apps:
            await asyncio.sleep(0.01)
        await apps[0].wait_for(10)
        writer.close()  # close_notify
        for _ in range(100):
            if apps[0].eofs:
                break
            await asyncio.sleep(0.02)
        app = apps[0]
        assert app.transport is not None
        app.transport.pause_reading()
        app.transport.resume_reading()  # as a lingering close does
        await asyncio.sleep(0.2)
        assert (app.eofs, bytes(app.data)) == (1, b"last words")
        app.transport.close()
        await asyncio.wait_for(app.lost, 5)
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
