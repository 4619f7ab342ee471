"""One SIGHUP reloads everything together: the configuration file (ops reloader), the password
and ACL files (auth reloader) and the TLS certificates (listeners reloader), each logged, and
each change in force afterwards (a new limit, a new user, the renewed certificate served)."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization

from broker import certs
from broker.auth import hashing
from listeners.conftest import PKI, endpoint, make_pki

CONFIG = """
[limits]
max_queued_messages = {limit}
[auth]
password_file = "{passwords}"
acl_file = "{acl}"
[[listener]]
port = 0
certfile = "{cert}"
keyfile = "{key}"
"""


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path / "pki")  # its own: this test renews the server certificate


def _served_certificate(host: str, port: int, ca: Path) -> bytes:
    """The DER certificate a TLS client gets from the listener."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def _connack(port: int, username: str, password: str) -> mqtt.ReasonCode:
    """The CONNACK reason a v5 client with these credentials gets on the plain listener."""
    done = threading.Event()
    result: list[mqtt.ReasonCode] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)

    def on_connect(_client, _userdata, _flags, reason_code, _properties) -> None:
        result.append(reason_code)
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0]


def test_one_sighup_reloads_config_auth_files_and_certificates(broker_factory, pki: PKI, tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    passwords.write_text(f"alice:{hashing.create(b'a-secret')}\n")
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite site/#\n")
    values = {"passwords": passwords, "acl": acl, "cert": pki.server_cert, "key": pki.server_key}
    broker = broker_factory(config=CONFIG.format(limit=3, **values))
    config_path = Path(broker.args[broker.args.index("-c") + 1])
    tls = endpoint(broker, "mqtt over TLS", 2)
    old_der = _served_certificate(tls.host, tls.port, pki.ca)
    assert _connack(broker.port, "alice", "a-secret") == 0
    assert _connack(broker.port, "bob", "b-secret") != 0

    # The operator edits all three kinds of file, then sends one SIGHUP (systemctl reload).
    config_path.write_text(CONFIG.format(limit=6, **values))
    passwords.write_text(f"alice:{hashing.create(b'a-secret')}\nbob:{hashing.create(b'b-secret')}\n")
    acl.write_text("user alice\ntopic readwrite site/#\nuser bob\ntopic read site/#\n")
    certs.renew(pki.dir, "server")
    broker.proc.send_signal(signal.SIGHUP)

    broker.wait_for_log(r"reload: \[limits\] max_queued_messages changed from 3 to 6")
    broker.wait_for_log(rf"authentication reloaded: 2 users from {re.escape(str(passwords))}, \d+ ACL rules from "
                        rf"{re.escape(str(acl))}")
    broker.wait_for_log(rf"listener .*: certificate {re.escape(str(pki.server_cert))} reloaded \(.*valid until")
    log = broker.log()
    assert log.count("reloading (SIGHUP)") == 1  # one signal did all three
    after = log[log.index("reloading (SIGHUP)"):]
    assert "not reloaded" not in after and "reload failed" not in after and "keeping the certificate" not in after

    # Each change is in force.
    assert _connack(broker.port, "bob", "b-secret") == 0
    served = _served_certificate(tls.host, tls.port, pki.ca)
    assert served != old_der
    assert served == certs.load_certificate(pki.server_cert).public_bytes(serialization.Encoding.DER)
