"""The file backend: mosquitto-style ``password_file`` and ``acl_file``.

Without a password file it checks no credentials (every client counts as
anonymous: a user name nobody verified must never pick up that user's ACL
rights). Without an ACL file every client may use every topic.

Hash checks run in a small pool of worker *processes*: the hash functions of
``cryptography`` hold the GIL while they run (measured: the event loop stopped
for the whole 20-30 ms of each Argon2id check run in a thread), so only another
process keeps the broker responsive while hundreds of devices log in at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import sys
from concurrent.futures.process import BrokenProcessPool

from broker.auth import hashing
from broker.auth.acl import READ, WRITE, Acl, ClientRules, may_access, may_subscribe, parse_acl
from broker.auth.base import (
    ACCEPTED,
    BAD_CREDENTIALS,
    NOT_MINE,
    PUBLISH,
    RECEIVE,
    SUBSCRIBE,
    AuthResult,
    Client,
    Credentials,
)
from broker.auth.password_file import load as load_passwords

log = logging.getLogger("broker")

# Leave a core for the event loop; a Raspberry Pi 4 gets 3 workers, a Pi Zero 1.
HASH_WORKERS = max(1, min(4, (os.cpu_count() or 1) - 1))
_RULES_CACHE_LIMIT = 10_000


def _lower_priority() -> None:
    """In each hash worker: the event loop comes first when the cores are busy."""
    if sys.platform != "win32":
        os.nice(10)


class FileBackend:
    """``AuthBackend`` over a password file and an ACL file (either may be absent)."""

    def __init__(
        self,
        password_file: str | None = None,
        acl_file: str | None = None,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.password_file = password_file
        self.acl_file = acl_file
        self._users: dict[str, hashing.PasswordHash] | None = None
        self._acl: Acl | None = None
        self._rules: dict[tuple[str | None, str], ClientRules] = {}
        self._executor = executor
        self._own_executor = executor is None
        self._dummy: hashing.PasswordHash | None = None
        self._load()

    @property
    def authorizes_topics(self) -> bool:
        return self._acl is not None

    # ---- loading -------------------------------------------------------------------------
    def _load(self) -> None:
        """Read both files first, then swap: a bad file leaves everything as it was."""
        users = load_passwords(self.password_file) if self.password_file else None
        acl = parse_acl(self.acl_file) if self.acl_file else None
        self._users = users
        self._acl = acl
        self._rules = {}
        if users is not None and self._dummy is None:
            self._dummy = hashing.dummy_hash()  # now, at start or reload: not on the packet path

    def reload(self) -> str:
        self._load()
        return self.describe()

    def describe(self) -> str:
        parts = []
        if self._users is not None:
            parts.append(f"{len(self._users)} users from {self.password_file}")
        if self._acl is not None:
            parts.append(f"{len(self._acl)} ACL rules from {self.acl_file}")
        return ", ".join(parts) or "no password file, no ACL file"

    # ---- authentication ----------------------------------------------------------------------
    def _pool(self) -> concurrent.futures.Executor:
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                HASH_WORKERS, mp_context=multiprocessing.get_context("spawn"), initializer=_lower_priority
            )
        return self._executor

    def warm_up(self) -> None:
        """Start the hash workers now rather than on the first login."""
        if self._users is not None:
            self._pool().submit(int)

    async def authenticate(self, credentials: Credentials) -> AuthResult:
        users = self._users
        if users is None or credentials.username is None:
            return AuthResult(NOT_MINE)
        username = credentials.username
        stored = users.get(username)
        known = stored is not None
        if stored is None:
            # Check against a hash anyway: a missing user must take as long as a wrong password.
            stored = self._dummy or hashing.dummy_hash()
        password = credentials.password if credentials.password is not None else b""
        loop = asyncio.get_running_loop()
        try:
            ok = await loop.run_in_executor(self._pool(), hashing.verify, stored, password)
        except BrokenProcessPool:
            if self._own_executor:
                self._executor = None  # a worker died: start a fresh pool next time
            raise
        if ok and known and credentials.password is not None:
            return AuthResult(ACCEPTED, username)
        reason = "unknown user" if not known else "no password" if credentials.password is None else "wrong password"
        return AuthResult(BAD_CREDENTIALS, reason=reason)

    # ---- authorization ------------------------------------------------------------------------
    def authorize(self, client: Client, action: int, topic: str) -> bool:
        acl = self._acl
        if acl is None:
            return True
        key = (client.username, client.client_id)
        rules = self._rules.get(key)
        if rules is None:
            if len(self._rules) >= _RULES_CACHE_LIMIT:
                self._rules.clear()
            rules = self._rules[key] = acl.rules_for(client.username, client.client_id)
        if action == RECEIVE:
            return may_access(rules, READ, topic)
        if action == PUBLISH:
            return may_access(rules, WRITE, topic)
        if action == SUBSCRIBE:
            return may_subscribe(rules, topic)
        return False

    def close(self) -> None:
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
