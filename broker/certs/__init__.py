"""Certificates for the broker's TLS listeners: ``python -m broker certs`` and its Python API.

Tests and tools call the API directly::

    from broker import certs
    where = certs.init(tmp_path, hosts=["localhost"], ips=["127.0.0.1"])
    device = certs.issue_client(tmp_path, "sensor-1")
    # where.ca_cert, where.server_cert, where.server_key, device.cert, device.key, device.key_der ...
"""

from __future__ import annotations

from broker.certs.describe import describe, expires_in, expiry_text, subject_alt_names
from broker.certs.issue import (
    CA_DAYS,
    CLIENT_DAYS,
    SERVER_DAYS,
    CertError,
    Issued,
    KeyType,
    generate_key,
    make_ca,
    make_client_cert,
    make_server_cert,
)
from broker.certs.store import (
    CertPaths,
    ClientPaths,
    client_paths,
    init,
    issue_client,
    load_certificate,
    load_certificates,
    load_key,
    paths,
    renew,
)

__all__ = [
    "CA_DAYS",
    "CLIENT_DAYS",
    "SERVER_DAYS",
    "CertError",
    "CertPaths",
    "ClientPaths",
    "Issued",
    "KeyType",
    "client_paths",
    "describe",
    "expires_in",
    "expiry_text",
    "generate_key",
    "init",
    "issue_client",
    "load_certificate",
    "load_certificates",
    "load_key",
    "make_ca",
    "make_client_cert",
    "make_server_cert",
    "paths",
    "renew",
    "subject_alt_names",
]
