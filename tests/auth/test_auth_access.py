"""AccessControl without sockets: anonymous policy per listener, certificate identities, throttling.

The TLS listeners are built elsewhere; here the certificate arrives as the dict that
``ssl.SSLSocket.getpeercert()`` returns, the form ``Transport.peer_certificate`` promises.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from broker.auth.access import AccessControl, Decision, certificate_common_name
from broker.auth.base import Credentials
from broker.auth.file_backend import FileBackend
from broker.auth.throttle import LoginThrottle, address_of
from broker.core.transport import ListenerInfo
from broker.protocol import reason_codes as RC

from .scenario_files import write_scenario
from broker.auth.contract import SCENARIO

LOOPBACK = ListenerInfo(name="127.0.0.1:1883", local=True)
NETWORK = ListenerInfo(name="0.0.0.0:1883", local=False)
CERT_LISTENER = ListenerInfo(name="0.0.0.0:8883", local=False, tls=True, use_identity_as_username=True)

# getpeercert() of a client certificate with subject "O=Example, CN=sensor7".
CERT = {
    "subject": ((("organizationName", "Example"),), (("commonName", "sensor7"),)),
    "issuer": ((("commonName", "Example CA"),),),
    "notAfter": "Jan  1 00:00:00 2030 GMT",
}


def decide(control: AccessControl, credentials: Credentials) -> Decision:
    """The decision, awaited when it is not immediate (as the connection does on the event loop)."""

    async def run() -> Decision:
        result = control.authenticate(credentials)
        return result if isinstance(result, Decision) else await result

    return asyncio.run(run())


def creds(listener: ListenerInfo, user: str | None = None, password: bytes | None = None, cert: dict | None = None,
          client_id: str = "c1", peer: str = "192.0.2.7:4000") -> Credentials:
    return Credentials(client_id, user, password, peer, listener, cert)


@pytest.mark.parametrize(
    "configured, listener, allowed",
    [
        (None, LOOPBACK, True),
        (None, NETWORK, False),
        (True, NETWORK, True),
        (False, LOOPBACK, False),
        (None, ListenerInfo(local=False, allow_anonymous=True), True),
        (True, ListenerInfo(local=True, allow_anonymous=False), False),
    ],
)
def test_anonymous_policy(configured: bool | None, listener: ListenerInfo, allowed: bool) -> None:
    control = AccessControl(FileBackend(), configured)
    decision = decide(control, creds(listener))
    assert decision.reason_code == (RC.SUCCESS if allowed else RC.NOT_AUTHORIZED)


def test_start_log_line_says_what_to_configure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="broker")
    AccessControl(FileBackend()).log_listener_policy(NETWORK)
    AccessControl(FileBackend(), True).log_listener_policy(NETWORK)
    AccessControl(FileBackend()).log_listener_policy(LOOPBACK)
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records[0][0] == "WARNING" and "anonymous clients refused" in records[0][1]
    assert "python -m broker passwd -c FILE USER" in records[0][1] and "allow_anonymous = true" in records[0][1]
    assert records[1][0] == "WARNING" and "anonymous clients allowed on a network listener" in records[1][1]
    assert records[2][0] == "INFO" and "anonymous clients allowed (loopback listener" in records[2][1]


def test_certificate_common_name() -> None:
    assert certificate_common_name(CERT) == "sensor7"
    assert certificate_common_name({"subject": ((("organizationName", "x"),),)}) is None
    assert certificate_common_name(None) is None
    assert certificate_common_name({}) is None


def test_certificate_identity_is_the_user_name_for_the_acl(tmp_path: Path) -> None:
    passwords, acl = write_scenario(SCENARIO, tmp_path)
    (tmp_path / "acl").write_text(acl.read_text() + "\nuser sensor7\ntopic write plant/line1/#\n")
    control = AccessControl(FileBackend(str(passwords), str(tmp_path / "acl")))
    try:
        decision = decide(control, creds(CERT_LISTENER, cert=CERT))  # no password needed
        assert decision.reason_code == 0 and decision.client is not None
        assert decision.client.username == "sensor7"
        assert decision.rights is not None
        assert decision.rights.may_publish("plant/line1/temp") and not decision.rights.may_publish("plant/line2/temp")
        # The CN wins over a user name in CONNECT: a client cannot claim another identity.
        claimed = decide(control, creds(CERT_LISTENER, user="alice", password=b"alice-pw", cert=CERT))
        assert claimed.client is not None and claimed.client.username == "sensor7"
        # No certificate (or no CN) on such a listener: refused.
        assert decide(control, creds(CERT_LISTENER)).reason_code == RC.NOT_AUTHORIZED
        assert decide(control, creds(CERT_LISTENER, cert={"subject": ()})).reason_code == RC.NOT_AUTHORIZED
    finally:
        control.close()


def test_certificate_and_password_both_checked_without_identity_option(tmp_path: Path) -> None:
    """require_certificate without use_identity_as_username: the TLS layer checked the certificate,
    and the password file still decides."""
    passwords, acl = write_scenario(SCENARIO, tmp_path)
    control = AccessControl(FileBackend(str(passwords), str(acl)))
    listener = ListenerInfo(local=False, tls=True)
    try:
        assert decide(control, creds(listener, "alice", b"alice-pw", CERT)).reason_code == 0
        assert decide(control, creds(listener, "alice", b"bad", CERT)).reason_code == RC.BAD_USER_NAME_OR_PASSWORD
    finally:
        control.close()


def test_rights_cache_is_dropped_on_reload(tmp_path: Path) -> None:
    passwords, acl = write_scenario(SCENARIO, tmp_path)
    control = AccessControl(FileBackend(str(passwords), str(acl)))
    try:
        rights = decide(control, creds(LOOPBACK, "bob", SCENARIO.users["bob"].encode())).rights
        assert rights is not None
        assert rights.may_receive("home/x/temperature") and rights.may_publish("bob/out")
        acl.write_text("user bob\ntopic read garden/#\n")
        control.reload()
        assert not rights.may_receive("home/x/temperature") and not rights.may_publish("bob/out")
        assert rights.may_receive("garden/x")
        acl.write_text("user bob\ntopic read [broken\nuser\n")
        with pytest.raises(Exception, match=r"acl:3: 'user' needs a user name"):
            control.reload()
        assert rights.may_receive("garden/x")  # the previous rules stay
    finally:
        control.close()


def test_backend_failure_fails_closed() -> None:
    class Broken(FileBackend):
        @property
        def authorizes_topics(self) -> bool:
            return True

        def authorize(self, client, action, topic):  # type: ignore[no-untyped-def]
            raise RuntimeError("database down")

        async def authenticate(self, credentials):  # type: ignore[no-untyped-def]
            raise RuntimeError("database down")

    control = AccessControl(Broken())
    assert decide(control, creds(LOOPBACK, "alice", b"x")).reason_code == RC.SERVER_UNAVAILABLE
    rights = decide(control, creds(LOOPBACK)).rights
    assert rights is not None and not rights.may_receive("a") and not rights.may_publish("a")


def test_throttle_spaces_attempts_and_forgets() -> None:
    throttle = LoginThrottle(base=0.5, cap=4.0, forget_after=60.0)
    assert throttle.reserve("10.0.0.1", now=0.0) == 0.0
    throttle.failed("10.0.0.1", now=0.0)
    assert throttle.reserve("10.0.0.1", now=0.0) == pytest.approx(0.5)
    assert throttle.reserve("10.0.0.1", now=0.0) == pytest.approx(1.0)  # concurrent attempts queue up
    assert throttle.reserve("10.0.0.2", now=0.0) == 0.0  # per address
    for _ in range(10):
        throttle.failed("10.0.0.3", now=1.0)
    assert throttle.reserve("10.0.0.3", now=1.0) == pytest.approx(4.0)  # capped
    assert throttle.reserve("10.0.0.3", now=100.0) == 0.0  # forgotten after a quiet minute


def test_address_of_peer() -> None:
    assert address_of("192.0.2.1:1234") == "192.0.2.1"
    assert address_of("[2001:db8::1]:1234") == "2001:db8::1"
    assert address_of("unix:/run/edgemq.sock") == "unix:/run/edgemq.sock"


def test_credentials_never_show_the_password() -> None:
    shown = repr(creds(LOOPBACK, "alice", b"hunter2-secret"))
    assert "hunter2-secret" not in shown and "alice" in shown


def test_throttle_free_failures() -> None:
    throttle = LoginThrottle(base=1.0, free=2)
    throttle.failed("a", now=0.0)
    throttle.failed("a", now=0.0)
    assert throttle.reserve("a", now=0.0) == 0.0
    throttle.failed("a", now=0.0)
    assert throttle.reserve("a", now=0.0) == pytest.approx(1.0)


def test_a_user_failing_does_not_slow_other_users_from_the_same_address(tmp_path: Path) -> None:
    """One device stuck with a wrong password behind a NAT must not hold up the others; many
    user names failing from one address slows that address down."""
    passwords, acl = write_scenario(SCENARIO, tmp_path)
    control = AccessControl(
        FileBackend(str(passwords), str(acl)),
        throttle=LoginThrottle(base=100.0, cap=100.0),
        address_throttle=LoginThrottle(base=100.0, cap=100.0, free=2),
    )
    try:
        assert decide(control, creds(NETWORK, "alice", b"wrong")).reason_code == RC.BAD_USER_NAME_OR_PASSWORD
        # alice's next attempt would wait 100 s (over the limit: refused at once, busy) ...
        assert decide(control, creds(NETWORK, "alice", b"alice-pw")).reason_code == RC.SERVER_BUSY
        # ... bob from the same address is not held up.
        assert decide(control, creds(NETWORK, "bob", SCENARIO.users["bob"].encode())).reason_code == 0
        for user in ("x1", "x2"):  # more user names fail: the address itself is slowed now
            assert decide(control, creds(NETWORK, user, b"nope")).reason_code == RC.BAD_USER_NAME_OR_PASSWORD
        assert decide(control, creds(NETWORK, "dev1", b"dev1-pw")).reason_code == RC.SERVER_BUSY
        assert decide(control, creds(NETWORK, "dev1", b"dev1-pw", peer="192.0.2.99:1")).reason_code == 0
    finally:
        control.close()


def test_too_many_checks_at_once_are_refused_busy(tmp_path: Path) -> None:
    passwords, acl = write_scenario(SCENARIO, tmp_path)
    control = AccessControl(FileBackend(str(passwords), str(acl)))
    control.max_pending_checks = 3

    async def run() -> list[int]:
        results = [control.authenticate(creds(NETWORK, "alice", b"alice-pw", client_id=f"c{i}")) for i in range(5)]
        codes = []
        for result in results:
            codes.append((result if isinstance(result, Decision) else await result).reason_code)
        return codes

    try:
        assert asyncio.run(run()) == [0, 0, 0, RC.SERVER_BUSY, RC.SERVER_BUSY]
        assert control.pending_checks == 0
        assert decide(control, creds(NETWORK, "alice", b"alice-pw")).reason_code == 0  # room again
    finally:
        control.close()


def test_the_brokers_own_bridge_is_trusted(tmp_path: Path) -> None:
    """A [[bridge]]'s local connection is the operator's configuration, not a client: no login, no ACL
    (otherwise allow_anonymous = false or any ACL would cut every bridge off)."""
    passwords, acl = write_scenario(SCENARIO, tmp_path)
    control = AccessControl(FileBackend(str(passwords), str(acl)), allow_anonymous=False)
    bridge = ListenerInfo(name="bridge cloud", protocol="bridge", local=True)
    try:
        decision = decide(control, creds(bridge, client_id="bridge-cloud", peer="bridge:cloud"))
        assert decision.reason_code == 0 and decision.rights is None
        assert decide(control, creds(LOOPBACK)).reason_code == RC.NOT_AUTHORIZED  # the control
    finally:
        control.close()
