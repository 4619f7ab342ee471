"""The listeners inside one process: what a connection knows about its listener and its certificate.

These run ``Listeners`` with a real ``Engine`` (memory storage) and real sockets in
the test's own event loop, to look at what the authentication layer will see: the
``ListenerInfo`` of the connection and the client certificate's identity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from broker.config import Config, ListenerConfig
from broker.core.engine import Engine
from broker.core.transport import certificate_identity
from broker.server import listeners as listeners_module
from broker.server.listeners import Listeners
from broker.storage.factory import open_storage
from e2e.mqttraw import connect_packet

from .conftest import PKI, make_pki


async def with_listeners(config: Config, body: Callable[[Engine, Listeners], Awaitable[None]]) -> None:
    storage = await open_storage(config)
    engine = Engine(config, storage)
    await engine.start()
    group = Listeners(config, engine)
    await group.start()
    try:
        await body(engine, group)
    finally:
        group.close()
        await engine.shutdown()
        await group.wait_closed()


def address(group: Listeners, index: int) -> tuple[str, int]:
    host, _, port = group.listeners[index].addresses[0].rpartition(":")
    return host, int(port)


def mtls(pki: PKI, **extra: Any) -> ListenerConfig:
    return ListenerConfig(
        port=0,
        certfile=str(pki.server_cert),
        keyfile=str(pki.server_key),
        cafile=str(pki.ca),
        require_certificate=True,
        **extra,
    )


async def connect_mqtt(host: str, port: int, client_id: str, **tls: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port, **tls)
    writer.write(connect_packet(client_id))
    connack = await asyncio.wait_for(reader.readexactly(4), 5)
    assert connack == b"\x20\x02\x00\x00", connack
    return reader, writer


def test_connection_sees_its_listener_and_the_certificate_cn(pki: PKI) -> None:
    config = Config(
        backend="memory",
        listeners=[ListenerConfig(port=0), mtls(pki, use_identity_as_username=True, allow_anonymous=False)],
    )

    async def body(engine: Engine, group: Listeners) -> None:
        host, port = address(group, 1)
        _, tls_writer = await connect_mqtt(host, port, "over-tls", ssl=pki.client_context(), server_hostname=host)
        _, plain_writer = await connect_mqtt(*address(group, 0), "over-tcp")
        by_id = {conn.transport.peer: conn.transport for conn in engine.connections}
        tls_peer = "%s:%d" % tls_writer.get_extra_info("sockname")[:2]
        plain_peer = "%s:%d" % plain_writer.get_extra_info("sockname")[:2]
        tls_transport, plain_transport = by_id[tls_peer], by_id[plain_peer]

        assert tls_transport.listener.name == f"mqtt {host}:{port}"
        assert (tls_transport.listener.tls, tls_transport.listener.local) == (True, True)
        assert tls_transport.listener.use_identity_as_username
        assert tls_transport.listener.allow_anonymous is False
        assert certificate_identity(tls_transport.peer_certificate()) == pki.client_name

        assert plain_transport.listener.tls is False
        assert plain_transport.listener.allow_anonymous is None
        assert plain_transport.peer_certificate() is None
        for writer in (tls_writer, plain_writer):
            writer.close()

    asyncio.run(with_listeners(config, body))


def bundled_exchange(host: str, port: int, context: ssl.SSLContext, payload: bytes, answer: int) -> bytes:
    """A TLS client whose last handshake message and first data leave in one TCP segment.

    Its TLS runs on memory buffers, so the client's Finished and ``payload`` are sent with
    a single ``sendall``: the broker's TLS layer then has application data in hand the
    moment the handshake completes.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    with socket.create_connection((host, port), timeout=5) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(payload)
        sock.sendall(outgoing.read())
        received = b""
        while len(received) < answer:
            try:
                received += tls.read(answer - len(received))
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
        return received


def test_data_sent_with_the_end_of_the_handshake_is_not_lost(pki: PKI) -> None:
    """CONNECT and PINGREQ sent in the same segment as the client's Finished all reach the core."""
    config = Config(backend="memory", listeners=[mtls(pki)])

    async def body(engine: Engine, group: Listeners) -> None:
        host, port = address(group, 0)
        for attempt in range(5):
            payload = connect_packet(f"burst-{attempt}") + b"\xc0\x00"  # CONNECT + PINGREQ
            answer = await asyncio.to_thread(bundled_exchange, host, port, pki.client_context(), payload, 6)
            assert answer == b"\x20\x02\x00\x00\xd0\x00"  # CONNACK + PINGRESP

    asyncio.run(with_listeners(config, body))


@pytest.mark.parametrize(
    ("certificate", "identity"),
    [
        (None, None),
        ({}, None),
        ({"subject": ((("countryName", "DE"),), (("commonName", "sensor-7"),))}, "sensor-7"),
        ({"subject": ((("commonName", "first"),), (("commonName", "second"),))}, "first"),
        ({"subject": ((("organizationName", "edgemq"),),)}, None),
        ({"subject": ((("commonName", ""),),)}, None),
    ],
)
def test_certificate_identity(certificate: dict[str, Any] | None, identity: str | None) -> None:
    assert certificate_identity(certificate) == identity


def test_expiring_certificate_is_warned_about_at_start_and_periodically(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    soon = make_pki(tmp_path / "soon", server_days=5)
    monkeypatch.setattr(listeners_module, "EXPIRY_CHECK_SECONDS", 0.05)  # daily in production
    config = Config(backend="memory", listeners=[mtls(soon)])

    async def body(engine: Engine, group: Listeners) -> None:
        for _ in range(100):
            warnings = [r for r in caplog.records if "expires in" in r.getMessage()]
            if len(warnings) >= 3:
                break
            await asyncio.sleep(0.05)

    with caplog.at_level(logging.INFO, logger="broker"):
        asyncio.run(with_listeners(config, body))
    warnings = [r for r in caplog.records if "expires in" in r.getMessage()]
    assert len(warnings) >= 3
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert "expires in 4 days" in warnings[0].getMessage() or "expires in 5 days" in warnings[0].getMessage()


def accepted_sockets_without_nodelay(ports: set[int]) -> tuple[int, list[int]]:
    """This process's accepted TCP sockets on ``ports``: (how many, local ports of those without TCP_NODELAY)."""
    found, slow = 0, []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))  # a duplicate: family and type as they are
        except OSError:
            continue
        with sock:
            try:
                if sock.type != socket.SOCK_STREAM or sock.family != socket.AF_INET:
                    continue
                local_port = sock.getsockname()[1]
                sock.getpeername()  # accepted (a listening socket has no peer)
            except OSError:
                continue
            if local_port in ports:
                found += 1
                if not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
                    slow.append(local_port)
    return found, slow


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_accepted_connections_have_no_nagle_delay(pki: PKI, loop: str) -> None:
    """MQTT packets are small and answered at once: every listener's connections have TCP_NODELAY
    (asyncio and uvloop set it on every TCP transport; the broker relies on that)."""
    config = Config(
        backend="memory",
        listeners=[ListenerConfig(port=0), mtls(pki), ListenerConfig(port=0, protocol="websockets")],
    )

    async def body(engine: Engine, group: Listeners) -> None:
        ports = {address(group, index)[1] for index in range(3)}
        clients = [socket.create_connection(address(group, index), timeout=5) for index in range(3)]
        try:
            for _ in range(200):  # until the broker has accepted all three
                found, slow = accepted_sockets_without_nodelay(ports)
                if found == 3:
                    break
                await asyncio.sleep(0.01)
            assert (found, slow) == (3, [])
        finally:
            for client in clients:
                client.close()

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(with_listeners(config, body))
    else:
        asyncio.run(with_listeners(config, body))
