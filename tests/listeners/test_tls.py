"""MQTT over TLS and mutual TLS, with real clients: mosquitto_pub/sub, paho-mqtt, raw sockets.

The certificates come from ``broker.certs`` (see conftest). The oracles are the
clients themselves (a verified handshake, a delivered message, a refused
connection) and the broker's own ``$SYS`` counts.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from broker import certs

from brokerprocess import BrokerProcess
from e2e.mqttraw import connect_packet
from e2e.pahoclient import PahoClient

from .conftest import PKI, Endpoint, make_pki, write_crl

StartTLS = Callable[..., tuple[BrokerProcess, Endpoint]]


def mosquitto(tool: str, endpoint: Endpoint, *args: str, timeout: float = 10) -> subprocess.Popen[str]:
    command = [tool, "-h", endpoint.host, "-p", str(endpoint.port), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tls_args(pki: PKI, with_certificate: bool = True) -> list[str]:
    args = ["--cafile", str(pki.ca)]
    if with_certificate:
        args += ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    return args


def finish(process: subprocess.Popen[str], timeout: float = 10) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"{process.args} did not finish: {out!r} {err!r}") from None
    return process.returncode, out, err


def tls_paho(pki: PKI, endpoint: Endpoint, client_id: str, version: int = 5, **tls: object) -> PahoClient:
    client = PahoClient(endpoint, client_id=client_id, version=version)
    client.client.tls_set(
        ca_certs=str(pki.ca),
        certfile=tls.get("certfile", str(pki.client_cert)),  # type: ignore[arg-type]
        keyfile=tls.get("keyfile", str(pki.client_key)),  # type: ignore[arg-type]
    )
    return client


def wait_for_subscriber(broker: BrokerProcess, client_id: str) -> None:
    broker.wait_for_log(rf"New client connected .* as {client_id}\b")


def server_certificate(endpoint: Endpoint, context: ssl.SSLContext) -> bytes:
    """The DER certificate the listener presents to a new connection."""
    with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=endpoint.host) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der


def der(path: Path) -> bytes:
    return certs.load_certificate(path).public_bytes(serialization.Encoding.DER)


def sys_value(broker: BrokerProcess, topic: str, predicate: Callable[[int], bool], timeout: float = 10) -> int:
    """Wait until the retained $SYS ``topic`` (read over the plain listener) satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", topic, "-C", "1", "-W", "2"],
            capture_output=True, text=True, timeout=10,
        )
        if result.returncode == 0 and result.stdout.strip():
            last = int(result.stdout.strip())
            if predicate(last):
                return last
        time.sleep(0.2)
    raise AssertionError(f"{topic} = {last}, not as expected within {timeout}s")


# ---- mutual TLS with mosquitto_pub/sub ------------------------------------------------------


def test_mosquitto_clients_with_client_certificates(tls_broker: StartTLS, pki: PKI) -> None:
    broker, tls = tls_broker(mutual=True)
    sub = mosquitto("mosquitto_sub", tls, *tls_args(pki), "-i", "tls-sub", "-t", "site/+/temp", "-C", "2", "-v", "-q", "1")
    wait_for_subscriber(broker, "tls-sub")
    for n in (1, 2):
        pub = mosquitto("mosquitto_pub", tls, *tls_args(pki), "-t", f"site/{n}/temp", "-m", f"2{n}.5", "-q", "1")
        assert finish(pub)[0] == 0
    code, out, err = finish(sub)
    assert code == 0, err
    assert out.splitlines() == ["site/1/temp 21.5", "site/2/temp 22.5"]


def test_client_without_certificate_is_refused_on_mutual_tls(tls_broker: StartTLS, pki: PKI) -> None:
    broker, tls = tls_broker(mutual=True)
    code, _, err = finish(mosquitto("mosquitto_pub", tls, *tls_args(pki, with_certificate=False), "-t", "t", "-m", "x"))
    assert code != 0, "a client without a certificate was let in"
    broker.wait_for_log(r"TLS handshake with 127\.0\.0\.1:\d+ failed: PEER_DID_NOT_RETURN_A_CERTIFICATE")
    assert "New client connected" not in broker.log()


def test_certificate_from_another_ca_is_refused(tls_broker: StartTLS, pki: PKI, tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "other", client_name="intruder")
    broker, tls = tls_broker(mutual=True)
    args = ["--cafile", str(pki.ca), "--cert", str(stranger.client_cert), "--key", str(stranger.client_key)]
    code, _, _ = finish(mosquitto("mosquitto_pub", tls, *args, "-t", "t", "-m", "x"))
    assert code != 0
    broker.wait_for_log(r"TLS handshake with \S+ failed: (TLSV1_ALERT_UNKNOWN_CA|CERTIFICATE_VERIFY_FAILED)")
    assert "New client connected" not in broker.log()


def test_without_require_certificate_a_client_needs_only_the_ca(tls_broker: StartTLS, pki: PKI) -> None:
    broker, tls = tls_broker(mutual=False)
    sub = mosquitto("mosquitto_sub", tls, *tls_args(pki, with_certificate=False), "-i", "ca-only", "-t", "t", "-C", "1")
    wait_for_subscriber(broker, "ca-only")
    assert finish(mosquitto("mosquitto_pub", tls, *tls_args(pki, with_certificate=False), "-t", "t", "-m", "ok"))[0] == 0
    assert finish(sub)[1] == "ok\n"


# ---- paho-mqtt over TLS, and TLS to and from the plain listener -----------------------------


@pytest.mark.parametrize("version", [4, 5])
def test_paho_over_tls_reaches_plain_subscribers(tls_broker: StartTLS, pki: PKI, version: int) -> None:
    broker, tls = tls_broker(mutual=True)
    plain = PahoClient(broker, client_id=f"plain-{version}", version=version)
    plain.connect()
    plain.subscribe("from/tls", qos=1)
    device = tls_paho(pki, tls, f"device-{version}", version=version)
    device.connect()
    device.subscribe("from/plain", qos=1)
    device.client.publish("from/tls", b"hello over TLS", qos=1).wait_for_publish(5)
    plain.client.publish("from/plain", b"hello over TCP", qos=1).wait_for_publish(5)
    assert [m.payload for m in plain.wait_messages(1)] == [b"hello over TLS"]
    assert [m.payload for m in device.wait_messages(1)] == [b"hello over TCP"]
    for client in (plain, device):
        client.client.disconnect()
        client.client.loop_stop()


def test_tls_version_minimum_is_enforced(tls_broker: StartTLS, pki: PKI) -> None:
    broker, tls = tls_broker(mutual=False, extra='tls_version = "tlsv1.3"')
    old = pki.client_context(with_certificate=False)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        server_certificate(tls, old)
    new = pki.client_context(with_certificate=False)
    new.minimum_version = ssl.TLSVersion.TLSv1_3
    assert server_certificate(tls, new) == der(pki.server_cert)
    broker.wait_for_log(r"TLS handshake with \S+ failed")


# ---- bad clients do not take the listener down ---------------------------------------------


def test_silent_client_is_closed_after_the_handshake_timeout(tls_broker: StartTLS, pki: PKI) -> None:
    broker, tls = tls_broker(mutual=False, extra="handshake_timeout = 1", config="[mqtt]\nsys_interval = 1\n")
    with socket.create_connection((tls.host, tls.port), timeout=10) as silent:
        started = time.monotonic()
        assert silent.recv(1024) == b""  # closed by the broker, not by us
        elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 8, f"closed after {elapsed:.2f}s, handshake_timeout is 1 s"
    broker.wait_for_log(r"TLS handshake with \S+ failed: no TLS handshake within 1 s")
    topic = f"$SYS/broker/listeners/{tls.host}:{tls.port}/handshakes/failed"
    assert sys_value(broker, topic, lambda n: n >= 1) == 1


@pytest.mark.parametrize(
    "garbage",
    [
        connect_packet("plain-mqtt-on-tls-port"),
        b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 4,  # a TLS record header with nonsense in it
    ],
    ids=["mqtt-connect", "http", "broken-client-hello"],
)
def test_garbage_on_the_tls_port_does_not_take_the_listener_down(
    tls_broker: StartTLS, pki: PKI, garbage: bytes
) -> None:
    broker, tls = tls_broker(mutual=True, config="[mqtt]\nsys_interval = 1\n")
    for _ in range(3):
        with socket.create_connection((tls.host, tls.port), timeout=10) as raw:
            raw.sendall(garbage)
            try:
                while raw.recv(4096):
                    pass  # a TLS alert, then the close
            except ConnectionResetError:
                pass
    topic = f"$SYS/broker/listeners/{tls.host}:{tls.port}/handshakes/failed"
    assert sys_value(broker, topic, lambda n: n >= 3) == 3
    device = tls_paho(pki, tls, "after-garbage")
    device.connect()
    device.client.disconnect()
    device.client.loop_stop()
    completed = f"$SYS/broker/listeners/{tls.host}:{tls.port}/handshakes/completed"
    assert sys_value(broker, completed, lambda n: n >= 1) == 1
    assert broker.running


# ---- SIGHUP ----------------------------------------------------------------------------------


def test_sighup_swaps_the_certificate_without_dropping_connections(tls_broker: StartTLS, tmp_path: Path) -> None:
    own = make_pki(tmp_path / "pki")  # this test renews the server certificate: files of its own
    broker, tls = tls_broker(pki=own, mutual=True)
    before = der(own.server_cert)
    assert server_certificate(tls, own.client_context()) == before
    connected = tls_paho(own, tls, "stays-connected")
    connected.connect()
    connected.subscribe("renewed", qos=1)

    certs.renew(own.dir, "server", new_key=True)
    after = der(own.server_cert)
    assert after != before
    broker.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    broker.wait_for_log(r"certificate \S+server.crt reloaded \(")
    assert server_certificate(tls, own.client_context()) == after

    newcomer = tls_paho(own, tls, "after-renewal")
    newcomer.connect()
    newcomer.client.publish("renewed", b"over the new certificate", qos=1).wait_for_publish(5)
    assert [m.payload for m in connected.wait_messages(1)] == [b"over the new certificate"]
    connected.client.publish("renewed", b"over the old session", qos=1).wait_for_publish(5)
    assert [m.payload for m in connected.wait_messages(2)][1] == b"over the old session"
    assert not connected.disconnects, "SIGHUP dropped a connection"

    # A broken key on the next SIGHUP: the broker says so and keeps serving what it had.
    own.server_key.write_text("not a key\n")
    broker.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    broker.wait_for_log(r"keyfile \S+server.key: not a PEM or DER private key; keeping the certificate loaded before")
    assert server_certificate(tls, own.client_context()) == after
    assert not connected.disconnects
    for client in (connected, newcomer):
        client.client.disconnect()
        client.client.loop_stop()


def test_revoked_client_certificate_is_refused_and_crl_reloads_on_sighup(tls_broker: StartTLS, tmp_path: Path) -> None:
    own = make_pki(tmp_path / "pki")
    other = certs.issue_client(own.dir, "device-2")
    crl = tmp_path / "revoked.crl"
    write_crl(own, [own.client_cert], crl)
    broker, tls = tls_broker(pki=own, mutual=True, extra=f'crlfile = "{crl}"')

    revoked = tls_args(own)
    code, _, _ = finish(mosquitto("mosquitto_pub", tls, *revoked, "-t", "t", "-m", "x"))
    assert code != 0, "a revoked certificate was accepted"
    broker.wait_for_log(r"TLS handshake with \S+ failed: CERTIFICATE_VERIFY_FAILED \(certificate revoked\)")
    allowed = ["--cafile", str(own.ca), "--cert", str(other.cert), "--key", str(other.key)]
    assert finish(mosquitto("mosquitto_pub", tls, *allowed, "-t", "t", "-m", "x"))[0] == 0

    write_crl(own, [], crl)  # the revocation is lifted
    broker.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    broker.wait_for_log(r"certificate \S+server.crt reloaded")
    assert finish(mosquitto("mosquitto_pub", tls, *revoked, "-t", "t", "-m", "x"))[0] == 0
