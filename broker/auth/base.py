"""The one seam between the broker and whoever decides who may do what.

A backend answers two questions: *who is this?* (``authenticate``, once per
CONNECT, may take time: it is awaited off the packet path) and *may this client
do that with this topic?* (``authorize``, synchronous and cheap: the core caches
each answer per client and topic until the next reload). The file backend
(``file_backend.py``) is the first implementation; an HTTP, JWT or database
backend implements the same three methods and passes the same contract suite
(``broker.auth.contract``). The core never sees a password file or an ACL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from broker.core.transport import ListenerInfo

# What ``authorize`` is asked about.
RECEIVE = 1  # a message on this topic name may be delivered to the client (read)
PUBLISH = 2  # the client may publish to this topic name (write); also its will
SUBSCRIBE = 4  # the client may subscribe to this filter: it can match something it may read

# Outcomes of ``authenticate``.
ACCEPTED = "accepted"  # the credentials are good; ``username`` is the verified identity
BAD_CREDENTIALS = "bad credentials"  # CONNACK 0x86 / v3.1.1 4
NOT_AUTHORIZED = "not authorized"  # CONNACK 0x87 / v3.1.1 5
NOT_MINE = "not mine"  # the backend does not check these credentials: the client counts as anonymous


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented in CONNECT, and where it came from. The password never leaves here
    except to the backend; it is never logged."""

    client_id: str
    username: str | None
    password: bytes | None
    peer: str
    listener: ListenerInfo
    certificate: dict[str, Any] | None = None  # ssl getpeercert() form, verified by the TLS layer

    def __repr__(self) -> str:  # never the password, even in a traceback
        return f"Credentials(client_id={self.client_id!r}, username={self.username!r}, peer={self.peer!r})"


@dataclass(frozen=True, slots=True)
class AuthResult:
    outcome: str  # ACCEPTED | BAD_CREDENTIALS | NOT_AUTHORIZED | NOT_MINE
    username: str | None = None  # with ACCEPTED: the identity the ACL uses
    reason: str = ""  # for the log line (never the password)


@dataclass(frozen=True, slots=True)
class Client:
    """An authenticated (or anonymous) connection, as ``authorize`` sees it."""

    client_id: str
    username: str | None  # verified; None for anonymous clients
    peer: str
    listener: ListenerInfo


class AuthBackend(Protocol):
    """Implement this to plug another source of users and rights into the broker."""

    @property
    def authorizes_topics(self) -> bool:
        """False when every accepted client may use every topic (no ACL configured): the core
        then skips topic checks altogether."""

    async def authenticate(self, credentials: Credentials) -> AuthResult:
        """Check credentials. Expensive work (hashing, network) must not block the event loop."""

    def authorize(self, client: Client, action: int, topic: str) -> bool:
        """RECEIVE/PUBLISH with a topic name, SUBSCRIBE with a filter (``$share/g/`` removed).

        Must be fast and must not block: the answer is cached per client and topic."""

    def reload(self) -> str:
        """Re-read the backend's sources (SIGHUP). Raise to keep the current state; return a
        short description of what is loaded now, for the log."""

    def close(self) -> None:
        """Release workers and connections at shutdown."""
