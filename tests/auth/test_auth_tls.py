"""Certificates as identities, over real TLS listeners ([[listener]], certificates from broker.certs).

With ``use_identity_as_username`` the client certificate's CN is the user name the ACL
sees (no password); with ``require_certificate`` alone the certificate gets a client in
and the password file still decides who it is.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker import certs
from broker.auth import hashing
from e2e.mqttraw import PUBLISH, RawClient
from e2e.pahoclient import PahoClient

ACL = """\
user sensor-7
topic write plant/line1/#
topic read plant/line1/cmd

user admin
topic readwrite #
"""


@dataclass(frozen=True)
class Files:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("pki")
    where = certs.init(directory, hosts=["localhost"], ips=["127.0.0.1"])
    device = certs.issue_client(directory, "sensor-7")
    return Files(where.ca_cert, where.server_cert, where.server_key, device.cert, device.key)


def start(broker_factory, tmp_path: Path, pki: Files, listener_extra: str):  # type: ignore[no-untyped-def]
    (tmp_path / "acl").write_text(ACL)
    (tmp_path / "passwords").write_text(
        f"admin:{hashing.create(b'admin-pw')}\nsensor-7:{hashing.create(b'sensor-pw')}\n"
    )
    config = (
        f'[auth]\npassword_file = "{tmp_path / "passwords"}"\nacl_file = "{tmp_path / "acl"}"\n\n'
        f'[[listener]]\nport = 0\ncertfile = "{pki.server_cert}"\nkeyfile = "{pki.server_key}"\n'
        f'cafile = "{pki.ca}"\nrequire_certificate = true\n{listener_extra}\n'
    )
    broker = broker_factory("--memory", config=config)
    match = broker.wait_for_log(r"mqtt over TLS.* listening on 127\.0\.0\.1:(\d+)")
    return broker, Endpoint("127.0.0.1", int(match.group(1)))


def tls_client(pki: Files, endpoint: Endpoint, client_id: str, version: int = 5) -> PahoClient:
    client = PahoClient(endpoint, client_id=client_id, version=version)
    client.client.tls_set(ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key))
    return client


def test_certificate_cn_is_the_user_name(broker_factory, tmp_path: Path, pki: Files) -> None:
    broker, tls = start(broker_factory, tmp_path, pki, "use_identity_as_username = true")
    broker.wait_for_log(rf"listener mqtt 127\.0\.0\.1:{tls.port}: the client certificate's CN is the user name")
    watcher = RawClient(broker.host, broker.port, 5)
    assert watcher.connect("watcher", username="admin", password=b"admin-pw").reason_code == 0
    assert watcher.subscribe([("#", 0)]).reason_codes == [0]
    device = tls_client(pki, tls, "sensor-7-a")
    # A user name in CONNECT does not matter: the certificate says who this is.
    device.client.username_pw_set("admin")
    try:
        device.connect()
        broker.wait_for_log(r"New client connected from 127\.0\.0\.1:\d+ as sensor-7-a \(p5, c1, k30, u'sensor-7'\)")
        assert device.subscribe("plant/line1/cmd", qos=1) == [1]
        assert device.subscribe("plant/#", qos=0) == [0]  # overlaps: granted, filtered on delivery
        assert device.subscribe("admin/#", qos=0) == [0x87]
        device.publish("plant/line1/temp", b"21.5", qos=1)
        denied = device.client.publish("plant/line2/temp", b"forged", qos=1)
        denied.wait_for_publish(5)
        mid = denied.mid
        assert device.wait_for(lambda: device.pubacks.get(mid), what="PUBACK") == 0x87
        topics = [p.topic for p in watcher.collect(0.5) if p.type == PUBLISH]
        assert topics == ["plant/line1/temp"]
    finally:
        device.close()
        watcher.close()


def test_require_certificate_and_password_must_both_pass(broker_factory, tmp_path: Path, pki: Files) -> None:
    broker, tls = start(broker_factory, tmp_path, pki, "allow_anonymous = false")
    good = tls_client(pki, tls, "sensor-7-b", version=4)
    good.client.username_pw_set("sensor-7", "sensor-pw")
    bad = tls_client(pki, tls, "sensor-7-c", version=4)
    bad.client.username_pw_set("sensor-7", "wrong")
    nobody = tls_client(pki, tls, "sensor-7-d", version=4)
    try:
        assert good.connect().reason_code == 0
        assert bad.connect(expect_success=False).reason_code == 0x86  # paho: v3.1.1 return code 4
        assert nobody.connect(expect_success=False).reason_code == 0x87  # anonymous refused (5)
    finally:
        for client in (good, bad, nobody):
            client.close()


@pytest.mark.skipif(not shutil.which("mosquitto_pub"), reason="mosquitto-clients not installed")
def test_mosquitto_clients_with_certificates(broker_factory, tmp_path: Path, pki: Files) -> None:
    broker, tls = start(broker_factory, tmp_path, pki, "use_identity_as_username = true")
    base = ["-h", "127.0.0.1", "-p", str(tls.port), "--cafile", str(pki.ca),
            "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    sub = subprocess.Popen(
        ["stdbuf", "-oL", "mosquitto_sub", *base, "-i", "sensor-7-sub", "-t", "plant/line1/cmd", "-C", "1", "-W", "10",
         "-d", "-F", "MSG|%t|%p"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert sub.stdout is not None
        for line in sub.stdout:  # until its SUBACK: then it is subscribed
            if "SUBACK" in line:
                break
        admin = RawClient(broker.host, broker.port, 4)
        assert admin.connect("admin", username="admin", password=b"admin-pw").reason_code == 0
        admin.publish("plant/line1/cmd", b"start", qos=1)
        out, _ = sub.communicate(timeout=15)
        assert sub.returncode == 0, out
        assert [line for line in out.splitlines() if line.startswith("MSG|")] == ["MSG|plant/line1/cmd|start"]
        broker.wait_for_log(r"New client connected .* as sensor-7-sub \(.*u'sensor-7'\)")
        admin.close()
        refused = subprocess.run(["mosquitto_pub", *base, "-t", "admin/x", "-m", "x", "-q", "1", "-V", "mqttv5"],
                                 capture_output=True, text=True, timeout=10)
        assert "not authorized" in (refused.stdout + refused.stderr).lower()
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(5)
