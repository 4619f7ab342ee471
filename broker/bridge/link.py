"""The outgoing connection of a bridge: TCP or TLS to the upstream broker, CONNECT/CONNACK.

Only bytes and decoded packets cross this module's boundary: what to do with a
packet is the bridge's business (``bridge.py``). Failures come back as
``LinkFailure`` with a reason an operator can act on (refused with which code,
which TLS problem, which socket error).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import cast

from broker.bridge.config import BridgeConfig
from broker.protocol import properties as P
from broker.protocol.codec import PacketReader, encode
from broker.protocol.errors import MQTTError
from broker.protocol.packets import MQTT_5, Connack, Connect, Packet

# mosquitto's try_private: protocol level 4 with the high bit set says "I am a bridge", and
# a broker that knows it does not send a bridge's own messages back to it (3.1.1's No Local).
BRIDGE_PROTOCOL_BIT = 0x80

V3_CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
V5_CONNACK_REASONS = {
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password", 0x87: "not authorized",
    0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8C: "bad authentication method", 0x90: "topic name invalid", 0x95: "packet too large",
    0x97: "quota exceeded", 0x99: "payload format invalid", 0x9A: "retain not supported",
    0x9B: "QoS not supported", 0x9C: "use another server", 0x9D: "server moved",
    0x9F: "connection rate exceeded",
}


class LinkFailure(Exception):
    """Connecting failed; ``str()`` is the reason as logged."""

    def __init__(self, reason: str, unsupported_private: bool = False) -> None:
        super().__init__(reason)
        self.unsupported_private = unsupported_private


def describe_error(exc: BaseException) -> str:
    """A socket, TLS or timeout error in words (mosquitto prints the OS error text too)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: server certificate not accepted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def connack_reason(version: int, code: int) -> str:
    table = V5_CONNACK_REASONS if version == MQTT_5 else V3_CONNACK_REASONS
    return f"{table.get(code, 'refused')} (code {code:#04x})"


def tls_context(config: BridgeConfig) -> ssl.SSLContext:
    """Client-side TLS as mosquitto's bridge_cafile/certfile/keyfile/alpn/insecure do it.

    Raises LinkFailure naming the file that cannot be used.
    """
    try:
        context = ssl.create_default_context(cafile=config.cafile, capath=config.capath)
    except (OSError, ssl.SSLError) as exc:
        where = f"cafile {config.cafile}" if config.cafile else f"capath {config.capath}"
        raise LinkFailure(f"TLS set-up: {where}: {describe_error(exc)}") from None
    if config.certfile:
        try:
            context.load_cert_chain(config.certfile, config.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise LinkFailure(f"TLS set-up: certfile {config.certfile} / keyfile {config.keyfile}: "
                              f"{describe_error(exc)}") from None
    if config.alpn:
        context.set_alpn_protocols(list(config.alpn))
    if config.insecure:
        # As mosquitto's bridge_insecure: the chain is still verified, the host name is not.
        context.check_hostname = False
    return context


class UpstreamLink(asyncio.Protocol):
    """One connection to the upstream broker; packets after CONNACK go to ``on_packets``."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.reader = PacketReader(client_side=True, version=version)
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[Connack] = asyncio.get_running_loop().create_future()
        # Until the bridge calls start(): packets that came right behind the CONNACK wait here.
        self.on_packets: Callable[[list[Packet]], None] | None = None
        self.on_lost: Callable[[str], None] | None = None
        self.early: list[Packet] = []
        self.closed = False
        self.close_reason = ""
        self.last_received = time.monotonic()

    # ---- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_received = time.monotonic()
        try:
            packets = self.reader.feed(data)
        except MQTTError as exc:
            packets = list(getattr(exc, "packets_before", []))
            self._deliver(packets)
            self.abort(f"the upstream broker sent a bad packet: {exc}")
            return
        self._deliver(packets)

    def _deliver(self, packets: list[Packet]) -> None:
        if not self.connack.done():
            if not packets:
                return
            first = packets.pop(0)
            if not isinstance(first, Connack):
                self.connack.set_exception(LinkFailure(f"expected CONNACK, got {type(first).__name__}"))
                self.abort("no CONNACK")
                return
            self.connack.set_result(first)
        if packets and not self.closed:
            if self.on_packets is None:
                self.early.extend(packets)
            else:
                self.on_packets(packets)

    def start(self, on_packets: Callable[[list[Packet]], None], on_lost: Callable[[str], None]) -> None:
        """Hand packets to the bridge from now on (first those that arrived meanwhile)."""
        self.on_packets = on_packets
        self.on_lost = on_lost
        early, self.early = self.early, []
        if early and not self.closed:
            on_packets(early)
        if self.closed:
            on_lost(self.close_reason or "closed by the upstream broker")

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.close_reason or (describe_error(exc) if exc else "closed by the upstream broker")
        self.closed = True
        if not self.close_reason:
            self.close_reason = reason
        if not self.connack.done():
            self.connack.set_exception(LinkFailure(reason))
        if self.on_lost is not None:
            self.on_lost(reason)

    # ---- used by the bridge ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        if not self.closed and self.transport is not None:
            self.transport.writelines(chunks)

    def buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None and not self.closed else 0

    def abort(self, reason: str) -> None:
        """Close now, without waiting for buffered output (the peer is gone or misbehaves)."""
        if not self.close_reason:
            self.close_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def close(self, reason: str) -> None:
        """Flush and close (after a DISCONNECT)."""
        if not self.close_reason:
            self.close_reason = reason
        if self.transport is not None:
            self.transport.close()


def connect_packet(config: BridgeConfig, receive_maximum: int, maximum_packet_size: int = 0) -> Connect:
    """The upstream CONNECT; v5 says how much the local broker takes (window and packet size)."""
    props: dict[int, object] = {}
    if config.protocol_version == MQTT_5:
        props[P.SESSION_EXPIRY_INTERVAL] = config.session_expiry
        props[P.RECEIVE_MAXIMUM] = receive_maximum
        if maximum_packet_size:
            props[P.MAXIMUM_PACKET_SIZE] = maximum_packet_size
    password = config.password.encode() if config.password is not None else None
    return Connect(config.client_id, config.protocol_version, "MQTT", config.clean_start, config.keepalive,
                   config.username, password, None, props)


def encode_connect(packet: Connect, private: bool) -> bytes:
    """The CONNECT bytes; ``private`` sets mosquitto's bridge bit in the protocol level."""
    data = encode(packet, packet.protocol_level)
    if not private:
        return data
    marker = data.index(b"\x00\x04MQTT") + 6
    return data[:marker] + bytes((data[marker] | BRIDGE_PROTOCOL_BIT,)) + data[marker + 1:]


async def open_link(
    config: BridgeConfig,
    host: str,
    port: int,
    private: bool,
    receive_maximum: int,
    maximum_packet_size: int = 0,
) -> tuple[UpstreamLink, Connack]:
    """Connect, send CONNECT, wait for a successful CONNACK; LinkFailure otherwise."""
    loop = asyncio.get_running_loop()
    version = config.protocol_version
    context = tls_context(config) if config.use_tls else None
    try:
        _, link = await asyncio.wait_for(
            loop.create_connection(
                lambda: UpstreamLink(version),
                host, port, ssl=context, server_hostname=host if context is not None else None,
            ),
            config.connect_timeout,
        )
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
        raise LinkFailure(describe_error(exc)) from None
    link.write(encode_connect(connect_packet(config, receive_maximum, maximum_packet_size), private))
    try:
        connack = await asyncio.wait_for(asyncio.shield(link.connack), config.connect_timeout)
    except asyncio.TimeoutError:
        link.abort("no CONNACK")
        raise LinkFailure(f"no CONNACK within {config.connect_timeout} s") from None
    except LinkFailure as exc:
        link.abort(str(exc))
        # A broker that does not know the bridge bit closes or answers "unacceptable protocol".
        raise LinkFailure(str(exc), unsupported_private=private) from None
    if connack.reason_code != 0:
        link.abort("refused")
        unsupported = private and connack.reason_code == 1
        raise LinkFailure(f"refused: {connack_reason(version, connack.reason_code)}", unsupported) from None
    return link, connack
