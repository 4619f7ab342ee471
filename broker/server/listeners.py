"""Every configured listener at once: plain TCP, TLS, WebSockets (ws/wss) and Unix sockets.

Each ``Listener`` opens its socket, gives every connection a ``ListenerInfo`` (what
the core and authentication may know about where a client came from), and for TLS
does the handshake (``tls_stream``) before the MQTT or WebSocket protocol sees a
byte: the listener sees each handshake's outcome (counted in ``$SYS``, failures
logged with the peer), and a certificate renewed on SIGHUP is used by new
connections while existing ones keep theirs.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Callable

from broker.config import Config, ListenerConfig, listener_settings
from broker.core.engine import Engine
from broker.core.transport import ListenerInfo
from broker.server.admission import Admission
from broker.server.tls import EXPIRY_WARNING, ServerTLS, TLSFileError, load_server_tls
from broker.server.tls_stream import HandshakeObserver, TLSServerProtocol
from broker.server.transport import MQTTProtocol
from broker.server.websocket import WebSocketProtocol

log = logging.getLogger("broker")

EXPIRY_CHECK_SECONDS = 86_400.0  # certificates about to expire are warned about daily
# Connections the kernel queues before we accept them. asyncio's default of 100 overflowed in a
# reconnect storm of 10,000 devices: every dropped SYN costs its client 1 s, 3 s, 7 s... of
# retry. The kernel caps it at net.core.somaxconn (4096 by default on current kernels).
LISTEN_BACKLOG = max(socket.SOMAXCONN, 4096)


class ListenerError(Exception):
    """A listener cannot start; the message names the listener and the file or address."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configured_address(settings: ListenerConfig) -> str:
    """The address as configured: "127.0.0.1:1883" (port 0 until bound), "unix:/run/edgemq.sock"."""
    if settings.path is not None:
        return f"unix:{settings.path}"
    return format_address(settings.bind, settings.port or 0)


def listener_name(settings: ListenerConfig, address: str | None = None) -> str:
    """How the log (and --check-config) names a listener: "mqtt 0.0.0.0:8883", "websockets unix:/run/x"."""
    return f"{settings.protocol} {configured_address(settings) if address is None else address}"


class Listener(HandshakeObserver):
    """One ``[[listener]]``: its server socket, its TLS state and its counts."""

    def __init__(self, settings: ListenerConfig, engine: Engine, admission: Admission | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.admission = admission  # connection limits shared by every listener
        self.server: asyncio.Server | None = None
        self.tls: ServerTLS | None = None
        self.addresses: list[str] = []  # as bound: "127.0.0.1:8883", "unix:/run/edgemq.sock"
        self.info = self._make_info(self.configured_address)
        self.handshakes_completed = 0
        self.handshakes_failed = 0
        self._unix_inode: int | None = None
        self._make_protocol = self._protocol_factory()

    # ---- names ---------------------------------------------------------------------

    @property
    def configured_address(self) -> str:
        return configured_address(self.settings)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def kind(self) -> str:
        """How the log describes it: "mqtt", "mqtt over TLS 1.2+ (client certificate required)", ..."""
        settings = self.settings
        parts = [settings.protocol]
        if settings.tls:
            parts.append(f"over TLS {settings.tls_version.removeprefix('tlsv')}+")
        details = []
        if settings.protocol == "websockets":
            details.append(f"{'wss' if settings.tls else 'ws'}, path {settings.websocket_path}")
        if settings.require_certificate:
            details.append("client certificate required")
        if settings.use_identity_as_username:
            details.append("certificate CN as username")
        if settings.path is not None:
            details.append(f"mode {settings.mode:04o}")
        text = " ".join(parts)
        return f"{text} ({', '.join(details)})" if details else text

    def _make_info(self, address: str) -> ListenerInfo:
        settings = self.settings
        return ListenerInfo(
            name=listener_name(settings, address),
            protocol=settings.protocol,
            tls=settings.tls,
            local=settings.path is not None or is_loopback(settings.bind),
            use_identity_as_username=settings.use_identity_as_username,
            allow_anonymous=settings.allow_anonymous,
        )

    # ---- protocols ---------------------------------------------------------------------

    def _protocol_factory(self) -> Callable[[], asyncio.Protocol]:
        """The protocol that speaks MQTT (or WebSocket) on an accepted, decrypted connection."""
        engine = self.engine
        settings = self.settings
        if settings.protocol == "websockets":
            origins = list(settings.allowed_origins) if settings.allowed_origins is not None else None
            return lambda: WebSocketProtocol(
                engine,
                self.info,
                path=settings.websocket_path,
                max_message_size=engine.config.max_packet_size,
                handshake_timeout=float(settings.handshake_timeout),
                allowed_origins=origins,
                admission=self.admission,
            )
        return lambda: MQTTProtocol(engine, self.info, admission=self.admission)

    def _server_protocol(self) -> asyncio.BaseProtocol:
        if self.tls is None:
            return self._make_protocol()
        # The context of the moment: after a SIGHUP reload, new connections get the new certificate.
        return TLSServerProtocol(self.tls.context, self._make_protocol, float(self.settings.handshake_timeout), self)

    # ---- TLS -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Read the TLS files; ListenerError naming the listener and the file that is bad."""
        if not self.settings.tls:
            return
        try:
            self.tls = load_server_tls(self.settings, _utcnow())
        except TLSFileError as exc:
            raise ListenerError(f"listener {self.info.name}: {exc}") from None

    def handshake_completed(self, peer: str) -> None:
        self.handshakes_completed += 1

    def handshake_failed(self, peer: str, reason: str) -> None:
        self.handshakes_failed += 1
        log.info("listener %s: TLS handshake with %s failed: %s", self.name, peer, reason)

    def reload_tls(self) -> None:
        """SIGHUP: re-read the files; new connections use them, open ones keep their session."""
        if not self.settings.tls:
            return
        old = self.tls
        try:
            new = load_server_tls(self.settings, _utcnow())
        except TLSFileError as exc:
            log.error("listener %s: %s; keeping the certificate loaded before", self.name, exc)
            return
        self.tls = new
        if old is None or old.fingerprint != new.fingerprint:
            log.info(
                "listener %s: certificate %s reloaded (%s, valid until %s UTC)",
                self.name, self.settings.certfile, new.subject, f"{new.not_after:%Y-%m-%d %H:%M}",
            )
        else:
            log.info(
                "listener %s: certificate %s reloaded (the same certificate; CA and CRL files re-read)",
                self.name, self.settings.certfile,
            )
        self.warn_if_expiring(_utcnow())

    def warn_if_expiring(self, now: datetime.datetime) -> None:
        tls = self.tls
        if tls is None:
            return
        self._warn_expiry(
            now, tls.not_after, f"certificate {self.settings.certfile}", "TLS clients cannot connect", ""
        )
        if tls.ca_not_after is not None:
            self._warn_expiry(
                now, tls.ca_not_after, f"CA certificate in cafile {self.settings.cafile}",
                "client certificates cannot be verified", " ca",
            )
        if tls.not_before > now:
            log.warning(
                "listener %s: certificate %s is valid only from %s UTC (is the clock right?)",
                self.name, self.settings.certfile, f"{tls.not_before:%Y-%m-%d %H:%M}",
            )

    def _warn_expiry(
        self, now: datetime.datetime, not_after: datetime.datetime, what: str, effect: str, renew: str
    ) -> None:
        left = not_after - now
        when = f"{not_after:%Y-%m-%d %H:%M}"
        if left <= datetime.timedelta(0):
            log.error("listener %s: %s expired on %s UTC: %s; renew it", self.name, what, when, effect)
        elif left <= EXPIRY_WARNING:
            log.warning(
                "listener %s: %s expires in %d days (%s UTC); renew it (python -m broker certs renew%s) "
                "and send SIGHUP",
                self.name, what, left.days, when, renew,
            )

    # ---- sockets ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the socket(s); ListenerError naming the listener and address if it cannot."""
        loop = asyncio.get_running_loop()
        settings = self.settings
        try:
            if settings.path is not None:
                self.server = await self._start_unix(loop, settings.path)
            else:
                self.server = await loop.create_server(
                    self._server_protocol, settings.bind, settings.port, reuse_address=True, backlog=LISTEN_BACKLOG
                )
        except OSError as exc:
            # asyncio rewords bind errors ("error while attempting to bind on address ..."): use the errno's.
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenerError(f"listener {self.info.name}: cannot listen on {self.configured_address}: {why}") from None
        if settings.path is not None:
            self.addresses = [f"unix:{settings.path}"]
        else:
            self.addresses = []
            for sock in self.server.sockets:
                host, port = sock.getsockname()[:2]
                self.addresses.append(format_address(host, port))
        self.info = self._make_info(self.addresses[0] if self.addresses else self.configured_address)

    async def _start_unix(self, loop: asyncio.AbstractEventLoop, path: str) -> asyncio.Server:
        """Bind, set the mode, then accept: no client can connect before the permissions are set."""
        server = await loop.create_unix_server(self._server_protocol, path, start_serving=False, backlog=LISTEN_BACKLOG)
        try:
            os.chmod(path, self.settings.mode)
            self._unix_inode = os.stat(path).st_ino
            await server.start_serving()
        except OSError:
            server.close()
            raise
        return server

    def log_listening(self) -> None:
        for address in self.addresses:
            log.info("%s listening on %s", self.kind, address)
        if self.tls is not None:
            log.info(
                "listener %s: certificate %s (%s), valid until %s UTC",
                self.name, self.settings.certfile, self.tls.subject, f"{self.tls.not_after:%Y-%m-%d %H:%M}",
            )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        path = self.settings.path
        if path is not None and self._unix_inode is not None:
            try:  # remove our socket file, not one another process bound since
                info = os.stat(path)
                if stat.S_ISSOCK(info.st_mode) and info.st_ino == self._unix_inode:
                    os.unlink(path)
            except OSError:
                pass
            self._unix_inode = None

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()

    def sys_values(self) -> dict[str, str]:
        if not self.settings.tls:
            return {}
        prefix = f"$SYS/broker/listeners/{self.addresses[0] if self.addresses else self.configured_address}"
        return {
            f"{prefix}/handshakes/completed": str(self.handshakes_completed),
            f"{prefix}/handshakes/failed": str(self.handshakes_failed),
        }


class Listeners:
    """All listeners of the configuration, started together, reloaded on SIGHUP."""

    def __init__(self, config: Config, engine: Engine, admission: Admission | None = None) -> None:
        self.listeners = [Listener(settings, engine, admission) for settings in listener_settings(config)]
        self._expiry_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start every listener or none: the first that cannot start stops start-up (ListenerError).

        Certificates are checked before any socket is opened, so that a bad file does
        not leave half of the listeners accepting clients while the broker exits.
        """
        for listener in self.listeners:
            listener.prepare()
        try:
            for listener in self.listeners:
                await listener.start()
        except ListenerError:
            self.close()
            raise
        now = _utcnow()
        for listener in self.listeners:
            listener.log_listening()
            listener.warn_if_expiring(now)
        if any(listener.settings.tls for listener in self.listeners):
            self._expiry_task = asyncio.get_running_loop().create_task(self._watch_expiry())

    async def _watch_expiry(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            now = _utcnow()
            for listener in self.listeners:
                listener.warn_if_expiring(now)

    def reload(self, config: Config) -> None:
        """A reloader for SIGHUP: re-read every TLS listener's certificate, key and CA files."""
        for listener in self.listeners:
            listener.reload_tls()

    def sys_values(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for listener in self.listeners:
            values.update(listener.sys_values())
        return values

    def is_serving(self) -> bool:
        """Every listener accepts connections (for /readyz and the systemd watchdog)."""
        return all(listener.server is not None and listener.server.is_serving() for listener in self.listeners)

    @property
    def addresses(self) -> list[str]:
        return [address for listener in self.listeners for address in listener.addresses]

    def close(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            self._expiry_task = None
        for listener in self.listeners:
            listener.close()

    async def wait_closed(self) -> None:
        for listener in self.listeners:
            await listener.wait_closed()
