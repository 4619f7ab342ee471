"""What the core calls (``engine.auth``): one decision per CONNECT, cached topic checks after.

``AccessControl`` sits between the connection handlers and an ``AuthBackend``. It
adds what every backend needs and none should re-implement: the anonymous-client
policy of each listener, certificate identities, throttling and logging of failed
logins, a cache of topic decisions per client (dropped on reload), and failing
closed when a backend breaks.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from broker.auth.base import (
    ACCEPTED,
    BAD_CREDENTIALS,
    NOT_AUTHORIZED,
    NOT_MINE,
    PUBLISH,
    RECEIVE,
    SUBSCRIBE,
    AuthBackend,
    AuthResult,
    Client,
    Credentials,
)
from broker.auth.throttle import LoginThrottle, address_of
from broker.core.transport import ListenerInfo
from broker.protocol import reason_codes as RC

log = logging.getLogger("broker")

# Topic decisions kept per client and action; past this many the cache starts again.
CACHE_LIMIT = 4096
# An address whose next login slot is further away than this is refused at once.
MAX_THROTTLE_WAIT = 60.0
# Failures from one address, over all user names, before its every attempt slows down.
ADDRESS_FREE_FAILURES = 10
# Credential checks waiting or running at once; more are refused with 0x89 Server busy (a
# flood of CONNECTs with passwords must not queue work and memory without bound). A power
# cut's worth of devices reconnecting (500 on a site) fits.
MAX_PENDING_CHECKS = 2000


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to a CONNECT: reason code 0 and who the client is, or a refusal."""

    reason_code: int
    client: Client | None = None
    rights: ClientRights | None = None  # None: every topic allowed (no ACL)
    why: str = ""


class ClientRights:
    """One connection's topic checks, each answer cached until the next reload.

    The hot paths may read ``receive`` / ``publish`` (topic -> allowed) directly and call
    the method only on a miss: a dict look-up costs less than a method call per message.
    """

    __slots__ = ("client", "_backend", "receive", "publish", "_subscribe", "__weakref__")

    def __init__(self, client: Client, backend: AuthBackend) -> None:
        self.client = client
        self._backend = backend
        self.receive: dict[str, bool] = {}
        self.publish: dict[str, bool] = {}
        self._subscribe: dict[str, bool] = {}

    def may_receive(self, topic: str) -> bool:
        allowed = self.receive.get(topic)
        if allowed is None:
            allowed = self._decide(self.receive, RECEIVE, topic)
        return allowed

    def may_publish(self, topic: str) -> bool:
        allowed = self.publish.get(topic)
        if allowed is None:
            allowed = self._decide(self.publish, PUBLISH, topic)
        return allowed

    def may_subscribe(self, topic_filter: str) -> bool:
        """For ``$share/group/filter`` pass the filter (``split_shared``)."""
        allowed = self._subscribe.get(topic_filter)
        if allowed is None:
            allowed = self._decide(self._subscribe, SUBSCRIBE, topic_filter)
        return allowed

    def _decide(self, cache: dict[str, bool], action: int, topic: str) -> bool:
        try:
            allowed = bool(self._backend.authorize(self.client, action, topic))
        except Exception:
            log.exception("authorization check failed for %s on %r; denied", self.client.client_id, topic)
            return False  # not cached: the next message asks again
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[topic] = allowed
        return allowed

    def forget(self) -> None:
        self.receive.clear()
        self.publish.clear()
        self._subscribe.clear()


def certificate_common_name(certificate: dict[str, Any] | None) -> str | None:
    """The subject CN of a certificate in ``ssl.SSLSocket.getpeercert()`` form."""
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    return None


class AccessControl:
    def __init__(
        self,
        backend: AuthBackend,
        allow_anonymous: bool | None = None,
        clientid_prefix_username: bool = False,
        throttle: LoginThrottle | None = None,
        address_throttle: LoginThrottle | None = None,
    ) -> None:
        self.backend = backend
        self.allow_anonymous = allow_anonymous  # the configured default; None: loopback only
        self.clientid_prefix_username = clientid_prefix_username
        self.throttle = throttle or LoginThrottle()  # per address and user name
        self.address_throttle = address_throttle or LoginThrottle(free=ADDRESS_FREE_FAILURES)
        self._rights: weakref.WeakSet[ClientRights] = weakref.WeakSet()
        self.pending_checks = 0
        self.max_pending_checks = MAX_PENDING_CHECKS

    # ---- listeners ------------------------------------------------------------------------
    def anonymous_allowed(self, listener: ListenerInfo) -> bool:
        if listener.allow_anonymous is not None:
            return listener.allow_anonymous
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        return listener.local

    def log_listener_policy(self, listener: ListenerInfo) -> None:
        """One line at start per listener: who may connect there and what to configure."""
        name = listener.name
        if listener.use_identity_as_username:
            log.info("listener %s: the client certificate's CN is the user name", name)
            return
        allowed = self.anonymous_allowed(listener)
        explicit = listener.allow_anonymous is not None or self.allow_anonymous is not None
        if allowed and not listener.local:
            log.warning(
                "listener %s: anonymous clients allowed on a network listener (allow_anonymous = true): "
                "anyone who can reach it may connect",
                name,
            )
        elif allowed:
            log.info(
                "listener %s: anonymous clients allowed (%s)",
                name,
                "allow_anonymous = true" if explicit else "loopback listener; set allow_anonymous = false to require a login",
            )
        elif explicit:
            log.info("listener %s: anonymous clients refused (allow_anonymous = false)", name)
        else:
            log.warning(
                "listener %s: anonymous clients refused on a network listener: create users with "
                "'python -m broker passwd -c FILE USER' and set password_file, or set allow_anonymous = true",
                name,
            )

    # ---- CONNECT ------------------------------------------------------------------------------
    def authenticate(self, credentials: Credentials, assigned_client_id: bool = False) -> Decision | Awaitable[Decision]:
        """A Decision now when nothing needs checking, else an awaitable one (off the packet path)."""
        listener = credentials.listener
        if listener.protocol == "bridge":
            # The broker's own bridge (a [[bridge]] of its configuration, not a network client):
            # trusted like the configuration itself; its topics are the bridge's topic rules.
            return Decision(RC.SUCCESS, Client(credentials.client_id, None, credentials.peer, listener))
        if listener.use_identity_as_username:
            name = certificate_common_name(credentials.certificate)
            if name is None:
                return self._refused(credentials, NOT_AUTHORIZED, "no client certificate with a CN")
            return self._accepted(credentials, name, assigned_client_id)
        if credentials.username is None and credentials.password is None:
            return self._anonymous(credentials)
        if self.pending_checks >= self.max_pending_checks:
            log.warning(
                "Client %s from %s refused: %d logins are being checked already",
                credentials.client_id, credentials.peer, self.pending_checks,
            )
            return Decision(RC.SERVER_BUSY, why="too many logins at once, retry later")
        self.pending_checks += 1
        return asyncio.ensure_future(self._check_counted(credentials, assigned_client_id))

    async def _check_counted(self, credentials: Credentials, assigned_client_id: bool) -> Decision:
        try:
            return await self._check(credentials, assigned_client_id)
        finally:
            self.pending_checks -= 1

    async def _check(self, credentials: Credentials, assigned_client_id: bool) -> Decision:
        address = address_of(credentials.peer)
        wait = max(
            self.throttle.reserve(f"{address} {credentials.username}"), self.address_throttle.reserve(address)
        )
        if wait > MAX_THROTTLE_WAIT:
            log.warning(
                "Client %s from %s refused without checking: too many failed logins from %s",
                credentials.client_id, credentials.peer, address,
            )
            return Decision(RC.SERVER_BUSY, why="too many failed logins from this address")
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            result = await self.backend.authenticate(credentials)
        except Exception as exc:
            log.error("authentication of %s from %s failed: %r; refused", credentials.client_id, credentials.peer, exc)
            return Decision(RC.SERVER_UNAVAILABLE, why="authentication unavailable")
        return self._decide(credentials, result, assigned_client_id)

    def _decide(self, credentials: Credentials, result: AuthResult, assigned_client_id: bool) -> Decision:
        if result.outcome == ACCEPTED and result.username is not None:
            return self._accepted(credentials, result.username, assigned_client_id)
        if result.outcome == NOT_MINE:
            return self._anonymous(credentials)
        outcome = result.outcome if result.outcome in (BAD_CREDENTIALS, NOT_AUTHORIZED) else NOT_AUTHORIZED
        address = address_of(credentials.peer)
        self.address_throttle.failed(address)
        failures = self.throttle.failed(f"{address} {credentials.username}")
        return self._refused(credentials, outcome, result.reason, failures)

    def _accepted(self, credentials: Credentials, username: str, assigned_client_id: bool) -> Decision:
        if self.clientid_prefix_username and not assigned_client_id and not credentials.client_id.startswith(username):
            log.warning(
                "Client %s from %s refused: its client id does not start with its user name %r "
                "(clientid_prefix_username)",
                credentials.client_id, credentials.peer, username,
            )
            return Decision(RC.CLIENT_IDENTIFIER_NOT_VALID, why="client id must start with the user name")
        return self._grant(Client(credentials.client_id, username, credentials.peer, credentials.listener))

    def _anonymous(self, credentials: Credentials) -> Decision:
        if not self.anonymous_allowed(credentials.listener):
            return self._refused(credentials, NOT_AUTHORIZED, "anonymous clients are not allowed on this listener")
        if credentials.username is not None:
            log.debug("user name %r of %s is not checked by any backend: anonymous", credentials.username, credentials.client_id)
        return self._grant(Client(credentials.client_id, None, credentials.peer, credentials.listener))

    def _grant(self, client: Client) -> Decision:
        rights = None
        if self.backend.authorizes_topics:
            rights = ClientRights(client, self.backend)
            self._rights.add(rights)
        return Decision(RC.SUCCESS, client, rights)

    def _refused(self, credentials: Credentials, outcome: str, reason: str, failures: int = 0) -> Decision:
        code = RC.BAD_USER_NAME_OR_PASSWORD if outcome == BAD_CREDENTIALS else RC.NOT_AUTHORIZED
        user = f"user {credentials.username!r}" if credentials.username is not None else "no user name"
        log.warning(
            "Client %s from %s refused, %s (%s%s).",
            credentials.client_id or "<empty>",
            credentials.peer,
            "bad user name or password" if code == RC.BAD_USER_NAME_OR_PASSWORD else "not authorised",
            user + (f", {reason}" if reason else ""),
            f", failure {failures} for this user from this address" if failures > 1 else "",
        )
        return Decision(code, why="bad user name or password" if code == RC.BAD_USER_NAME_OR_PASSWORD else "not authorized")

    # ---- SIGHUP ---------------------------------------------------------------------------------
    def reload(self) -> str:
        """Re-read the backend's files; on error the old state stays (the exception says why)."""
        described = self.backend.reload()
        for rights in list(self._rights):
            rights.forget()
        return described

    def close(self) -> None:
        self.backend.close()
