"""What the core needs from a connection's byte stream, whatever carries it.

TCP, TLS, WebSocket and Unix-socket listeners, and a bridge's outgoing connection,
each give the core's ``Connection`` an object with this interface. The core never
sees an asyncio transport, a socket or a WebSocket frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    """What the core and the authentication layer may know about the listener a client used."""

    name: str = "default"  # as logged: "mqtt 127.0.0.1:1883", "websockets /run/edgemq.sock", ...
    protocol: str = "mqtt"  # "mqtt" | "websockets" | "bridge"
    tls: bool = False
    # Bound to a loopback address or a Unix socket: anonymous clients are allowed by default.
    local: bool = True
    # The client certificate's CN becomes the username (mosquitto's use_identity_as_username).
    use_identity_as_username: bool = False
    # None: the default for the listener (allowed when ``local``); True/False as configured.
    allow_anonymous: bool | None = None


DEFAULT_LISTENER = ListenerInfo()


class Transport(Protocol):
    """A bidirectional byte stream to one client, owned by the edge that created it."""

    listener: ListenerInfo
    @property
    def peer(self) -> str:
        """"host:port", "unix:PATH" or "bridge:NAME": for log lines and throttling (may be
        made when asked: an idle connection need not keep the string)."""

    def write(self, data: bytes) -> None:
        """Queue bytes for sending; never blocks."""

    def writelines(self, chunks: list[bytes]) -> None:
        """Queue several chunks for sending, in one system call where possible."""

    def write_buffer_size(self) -> int:
        """Bytes accepted by ``write`` and not yet handed to the network."""

    def close(self, linger: bool = False) -> None:
        """Send what is queued, then close.

        With ``linger`` the edge shuts down its write side and reads and discards what
        the client still sends for a bounded time, so that the client reads a final
        DISCONNECT or CONNACK instead of losing it to a TCP reset.
        """

    def pause_reading(self) -> None:
        """Stop delivering received bytes to the core until ``resume_reading``."""

    def resume_reading(self) -> None: ...

    def peer_certificate(self) -> dict[str, Any] | None:
        """The verified client certificate (``ssl.SSLSocket.getpeercert()`` form), or None."""


def certificate_identity(certificate: dict[str, Any] | None) -> str | None:
    """The identity of a verified client certificate: its subject's (first) common name.

    ``certificate`` is what ``Transport.peer_certificate()`` returns. With the listener's
    ``use_identity_as_username`` this is the username, as mosquitto does.
    """
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and isinstance(value, str) and value:
                return value
    return None
