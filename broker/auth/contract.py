"""The contract every ``AuthBackend`` must pass, as a suite any backend runs with its own factory.

Like Aedes' abstract persistence tests: a backend's test module does ::

    from broker.auth.contract import contract_tests

    def make_backend(scenario: Scenario) -> AuthBackend:
        ...  # set up users and rights described by ``scenario`` in your backend

    globals().update(contract_tests(make_backend))

and pytest collects one ``test_contract_*`` function per rule below. The tests
use only the interface in ``base.py``: nothing here knows about files. Plain
``assert``; pytest is not imported, so the module ships with the broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.auth.base import (
    ACCEPTED,
    BAD_CREDENTIALS,
    NOT_AUTHORIZED,
    NOT_MINE,
    PUBLISH,
    RECEIVE,
    SUBSCRIBE,
    AuthBackend,
    Client,
    Credentials,
)
from broker.core.transport import ListenerInfo

LISTENER = ListenerInfo(name="contract", local=False)


@dataclass(frozen=True)
class Scenario:
    """Users and rights in neutral form; a factory turns it into its backend's own setup.

    Rules are (access, filter) with access "read" | "write" | "readwrite" | "deny",
    in mosquitto's meaning; ``patterns`` apply to every client with %u / %c filled in.
    """

    users: dict[str, str] = field(default_factory=dict)  # name -> password
    anonymous: list[tuple[str, str]] = field(default_factory=list)
    rules: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    patterns: list[tuple[str, str]] = field(default_factory=list)


SCENARIO = Scenario(
    users={"alice": "alice-pw", "bob": "b0b:pässword with spaces", "dev1": "dev1-pw"},
    anonymous=[("read", "public/#")],
    rules={
        "alice": [("readwrite", "home/#"), ("deny", "home/secret/#"), ("read", "$SYS/broker/#")],
        "bob": [("read", "home/+/temperature"), ("write", "bob/out")],
        "dev1": [],
    },
    patterns=[("readwrite", "devices/%c/#"), ("read", "users/%u/inbox")],
)

Factory = Callable[[Scenario], AuthBackend]


def _credentials(username: str | None, password: str | bytes | None, client_id: str = "c1") -> Credentials:
    raw = password.encode("utf-8") if isinstance(password, str) else password
    return Credentials(client_id, username, raw, "192.0.2.1:50000", LISTENER)


def _client(username: str | None, client_id: str = "c1") -> Client:
    return Client(client_id, username, "192.0.2.1:50000", LISTENER)


def contract_tests(factory: Factory) -> dict[str, Callable[[], None]]:
    """The contract as ``{"test_contract_NAME": function}`` for a backend made by ``factory``."""

    def with_backend(body: Callable[[AuthBackend], None]) -> Callable[[], None]:
        def test() -> None:
            backend = factory(SCENARIO)
            try:
                body(backend)
            finally:
                backend.close()

        test.__doc__ = body.__doc__
        return test

    def authenticate(backend: AuthBackend, credentials: Credentials) -> tuple[str, str | None]:
        async def run() -> tuple[str, str | None]:
            result = await backend.authenticate(credentials)
            return result.outcome, result.username

        return asyncio.run(run())

    def good_password(backend: AuthBackend) -> None:
        """Every user's own password is accepted, with the user name as the identity."""
        for user, password in SCENARIO.users.items():
            assert authenticate(backend, _credentials(user, password)) == (ACCEPTED, user), user

    def bad_credentials(backend: AuthBackend) -> None:
        """A wrong password, another user's password, a missing one or an unknown user: 0x86."""
        cases = [
            ("alice", "alice-pw "), ("alice", "ALICE-PW"), ("alice", SCENARIO.users["bob"]),
            ("alice", None), ("alice", b""), ("mallory", "alice-pw"), ("Alice", "alice-pw"),
            ("bob", "b0b"),  # the part before a ':' in the password is not the password
        ]
        for user, password in cases:
            outcome, _ = authenticate(backend, _credentials(user, password))
            assert outcome in (BAD_CREDENTIALS, NOT_AUTHORIZED), (user, password, outcome)

    def anonymous_never_accepted_as_user(backend: AuthBackend) -> None:
        """Without a user name nobody is authenticated as a user (the core decides about anonymous)."""
        outcome, username = authenticate(backend, _credentials(None, None))
        assert outcome in (NOT_MINE, BAD_CREDENTIALS, NOT_AUTHORIZED) or username is not None

    def concurrent_checks(backend: AuthBackend) -> None:
        """Many checks at once each get their own answer."""

        async def run() -> list[str]:
            tasks = [
                backend.authenticate(_credentials("alice", "alice-pw" if i % 2 else "wrong", f"c{i}"))
                for i in range(12)
            ]
            return [r.outcome for r in await asyncio.gather(*tasks)]

        outcomes = asyncio.run(run())
        assert outcomes == [ACCEPTED if i % 2 else outcomes[0] for i in range(12)]
        assert outcomes[0] in (BAD_CREDENTIALS, NOT_AUTHORIZED)

    def publish_and_receive(backend: AuthBackend) -> None:
        """Read and write rights are separate, wildcards in rules match as in MQTT."""
        table = [
            ("alice", PUBLISH, "home/kitchen/light", True),
            ("alice", RECEIVE, "home/kitchen/light", True),
            ("alice", PUBLISH, "home", True),  # "home/#" covers its parent
            ("alice", PUBLISH, "office/light", False),
            ("bob", RECEIVE, "home/kitchen/temperature", True),
            ("bob", PUBLISH, "home/kitchen/temperature", False),
            ("bob", RECEIVE, "home/kitchen/humidity", False),
            ("bob", RECEIVE, "home/a/b/temperature", False),
            ("bob", PUBLISH, "bob/out", True),
            ("bob", RECEIVE, "bob/out", False),
            (None, RECEIVE, "public/news", True),
            (None, PUBLISH, "public/news", False),
            (None, RECEIVE, "home/kitchen/light", False),
        ]
        for user, action, topic, expected in table:
            assert backend.authorize(_client(user), action, topic) is expected, (user, action, topic)

    def deny_wins(backend: AuthBackend) -> None:
        """A deny rule wins over a broader grant."""
        alice = _client("alice")
        assert not backend.authorize(alice, RECEIVE, "home/secret/key")
        assert not backend.authorize(alice, PUBLISH, "home/secret")
        assert backend.authorize(alice, RECEIVE, "home/secretary")

    def user_rules_are_per_user(backend: AuthBackend) -> None:
        """One user's rules never apply to another user or to anonymous clients, nor theirs to a user."""
        assert not backend.authorize(_client("dev1"), RECEIVE, "home/x")
        assert not backend.authorize(_client(None), RECEIVE, "home/x")
        assert not backend.authorize(_client("alice"), RECEIVE, "public/news")

    def subscribe_filters(backend: AuthBackend) -> None:
        """A filter that can match something readable is granted (delivery checks each message);
        one that can match nothing readable, or lies inside a denied filter, is refused."""
        table = [
            ("alice", "#", True),
            ("alice", "home/+/light", True),
            ("alice", "+/kitchen", True),
            ("alice", "office/#", False),
            ("alice", "home/secret/#", False),
            ("alice", "home/secret/+", False),
            ("bob", "home/#", True),
            ("bob", "home/+/humidity", False),
            ("bob", "bob/out", False),  # write-only
            (None, "public/+", True),
            (None, "+/news", True),
            (None, "private/#", False),
        ]
        for user, topic_filter, expected in table:
            assert backend.authorize(_client(user), SUBSCRIBE, topic_filter) is expected, (user, topic_filter)

    def sys_topics_only_where_named(backend: AuthBackend) -> None:
        """$SYS is not reached through a leading wildcard, only through a rule that names it."""
        assert backend.authorize(_client("alice"), RECEIVE, "$SYS/broker/uptime")
        assert backend.authorize(_client("alice"), SUBSCRIBE, "$SYS/#")
        assert not backend.authorize(_client("alice"), PUBLISH, "$SYS/broker/uptime")
        for user in ("bob", None):
            assert not backend.authorize(_client(user), RECEIVE, "$SYS/broker/uptime")
            assert not backend.authorize(_client(user), SUBSCRIBE, "$SYS/#")

    def patterns_fill_in_identity(backend: AuthBackend) -> None:
        """%c and %u give each client its own topics, and nobody else's."""
        assert backend.authorize(_client("dev1", "sensor7"), PUBLISH, "devices/sensor7/state")
        assert backend.authorize(_client("dev1", "sensor7"), RECEIVE, "devices/sensor7/cmd")
        assert not backend.authorize(_client("dev1", "sensor7"), RECEIVE, "devices/sensor8/cmd")
        assert backend.authorize(_client("dev1"), RECEIVE, "users/dev1/inbox")
        assert not backend.authorize(_client("dev1"), RECEIVE, "users/bob/inbox")
        assert not backend.authorize(_client(None, "x"), RECEIVE, "users/%u/inbox")

    def unsafe_identities(backend: AuthBackend) -> None:
        """A client id or user name with '/', '+' or '#' reaches no one else's topics through a
        pattern (mosquitto CVE-2017-7650 for + and #; '/' still works against mosquitto 2.0)."""
        for client_id in ("sensor8/cmd", "+", "#", "a/+", "sensor8/#"):
            client = _client("dev1", client_id)
            for topic in ("devices/sensor8/cmd", "devices/sensor8/cmd/x", "devices/x/y"):
                assert not backend.authorize(client, RECEIVE, topic), (client_id, topic)
                assert not backend.authorize(client, PUBLISH, topic), (client_id, topic)
            assert not backend.authorize(client, SUBSCRIBE, "devices/sensor8/#"), client_id
        for username in ("bob/x", "+", "#"):  # %u: users/bob/x/inbox is not this user's inbox
            client = _client(username, "c9")
            assert not backend.authorize(client, RECEIVE, "users/bob/x/inbox"), username
            assert not backend.authorize(client, SUBSCRIBE, "users/+/inbox"), username

    def authorize_is_synchronous_and_fast(backend: AuthBackend) -> None:
        """authorize answers a plain bool without waiting (the core calls it on the packet path)."""
        client = _client("alice")
        start = time.perf_counter()
        for i in range(200):
            answer = backend.authorize(client, RECEIVE, f"home/room{i}/light")
            assert answer is True
        assert time.perf_counter() - start < 1.0

    def reload_keeps_answers(backend: AuthBackend) -> None:
        """Reloading unchanged sources changes no answer and reports what it loaded."""
        before = backend.authorize(_client("bob"), RECEIVE, "home/x/temperature")
        described = backend.reload()
        assert isinstance(described, str) and described
        assert backend.authorize(_client("bob"), RECEIVE, "home/x/temperature") == before
        assert authenticate(backend, _credentials("alice", "alice-pw")) == (ACCEPTED, "alice")

    bodies = [
        good_password, bad_credentials, anonymous_never_accepted_as_user, concurrent_checks,
        publish_and_receive, deny_wins, user_rules_are_per_user, subscribe_filters,
        sys_topics_only_where_named, patterns_fill_in_identity, unsafe_identities,
        authorize_is_synchronous_and_fast, reload_keeps_answers,
    ]
    return {f"test_contract_{body.__name__}": with_backend(body) for body in bodies}
