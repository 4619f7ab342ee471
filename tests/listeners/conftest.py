"""Fixtures for the listener tests: certificates from ``broker.certs``, and brokers with several listeners.

Every certificate comes from the broker's own tool (its Python API), as an operator
would make them with ``python -m broker certs``; only what the tool refuses to make
(an expired certificate) is built here with ``cryptography``.
"""

from __future__ import annotations

import datetime
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from broker import certs
from brokerprocess import BrokerFactory, BrokerProcess


@dataclass(frozen=True)
class PKI:
    """A CA, the broker's certificate for 127.0.0.1/localhost, and a device certificate."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_name: str

    def tls_table(self, *, port: int = 0, mutual: bool = True, extra: str = "") -> str:
        """A ``[[listener]]`` table for MQTT over TLS with these files."""
        lines = [
            "[[listener]]",
            f"port = {port}",
            f'certfile = "{self.server_cert}"',
            f'keyfile = "{self.server_key}"',
            f'cafile = "{self.ca}"',
        ]
        if mutual:
            lines.append("require_certificate = true")
        return "\n".join(lines) + "\n" + extra + "\n"

    def client_context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        """What a device uses: trusts our CA, checks the host name, shows its certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_certificate:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_pki(
    directory: Path, client_name: str = "device-1", server_days: int = certs.SERVER_DAYS, ca_days: int = certs.CA_DAYS
) -> PKI:
    where = certs.init(directory, hosts=["localhost"], ips=["127.0.0.1"], server_days=server_days, ca_days=ca_days)
    device = certs.issue_client(directory, client_name)
    return PKI(
        dir=directory,
        ca=where.ca_cert,
        server_cert=where.server_cert,
        server_key=where.server_key,
        client_cert=device.cert,
        client_key=device.key,
        client_name=client_name,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def write_expired_certificate(pki: PKI, path: Path) -> None:
    """A server certificate that expired yesterday, signed by the PKI's CA (the tool will not make one)."""
    ca_cert = certs.load_certificate(pki.ca)
    ca_key = certs.load_key(certs.paths(pki.dir).ca_key)
    key = certs.load_key(pki.server_key)
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def write_crl(pki: PKI, revoked: list[Path], path: Path) -> None:
    """A PEM CRL from the PKI's CA that revokes the given certificates (the tool makes no CRLs)."""
    ca_cert = certs.load_certificate(pki.ca)
    ca_key = certs.load_key(certs.paths(pki.dir).ca_key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=7))
    )
    for cert_path in revoked:
        serial = certs.load_certificate(cert_path).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


LISTENING_LINE = re.compile(r"broker: (?P<kind>.+) listening on (?P<address>\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Endpoint:
    """Where one listener listens: ``.host``/``.port`` (what PahoClient takes) or ``.path``."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""


def endpoints(broker: BrokerProcess, count: int, timeout: float = 5.0) -> list[Endpoint]:
    """The listeners as the broker logged them (``KIND listening on ADDRESS``), in order."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for match in LISTENING_LINE.finditer(broker.log()):
            address = match["address"]
            if address.startswith("unix:"):
                found.append(Endpoint(match["kind"], path=address.removeprefix("unix:")))
            else:
                host, _, port = address.rpartition(":")
                found.append(Endpoint(match["kind"], host=host.strip("[]"), port=int(port)))
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} listeners not logged within {timeout}s\n{broker.log()}")
        time.sleep(0.02)


def endpoint(broker: BrokerProcess, kind_prefix: str, count: int) -> Endpoint:
    """The first listener whose logged kind starts with ``kind_prefix`` (e.g. "mqtt over TLS")."""
    for found in endpoints(broker, count):
        if found.kind.startswith(kind_prefix):
            return found
    raise AssertionError(f"no {kind_prefix!r} listener in\n{broker.log()}")


StartBroker = Callable[..., BrokerProcess]


@pytest.fixture
def tls_broker(broker_factory: BrokerFactory, pki: PKI) -> Callable[..., tuple[BrokerProcess, Endpoint]]:
    """A broker with its plain listener (``--port 0``) and one TLS listener; returns it and the TLS endpoint."""

    def start(
        *, mutual: bool = True, extra: str = "", config: str = "", pki: PKI = pki
    ) -> tuple[BrokerProcess, Endpoint]:
        broker = broker_factory("--memory", config=pki.tls_table(mutual=mutual, extra=extra) + config)
        return broker, endpoint(broker, "mqtt over TLS", 2)

    return start
