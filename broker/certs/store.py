"""The certificate directory made by ``certs init``, and reading and writing its files.

Layout (``DIR`` is ``--dir``)::

    DIR/ca.crt               the CA certificate: the broker's cafile, and every device's
    DIR/ca.der               the same in DER, for MicroPython boards
    DIR/server.crt, .key     the broker's certificate and key (certfile, keyfile)
    DIR/clients/NAME.crt     a device's certificate and key, in PEM ...
    DIR/clients/NAME.key
    DIR/clients/NAME.der     ... and in DER for MicroPython (NAME.key.der is the key)
    DIR/ca-private/ca.key    the CA private key, in a directory of its own (mode 0700)

The CA key sits apart so that it can be moved off the gateway as a whole: whoever holds it
can make certificates the broker trusts. ``--ca-key`` points at it wherever it went.

Private keys are written with mode 0600 and every file is replaced atomically (written
beside, then renamed), so a broker that re-reads its files on SIGHUP never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from broker.certs.issue import (
    CA_DAYS,
    CLIENT_DAYS,
    SERVER_DAYS,
    CertError,
    Issued,
    KeyType,
    PrivateKey,
    check_client_name,
    issued_by,
    make_ca,
    make_client_cert,
    make_server_cert,
    renew_cert,
    same_public_key,
    generate_key,
    key_type_of,
)

KEY_MODE = 0o600
CERT_MODE = 0o644
PRIVATE_DIR_MODE = 0o700

CA_CERT = "ca.crt"
CA_DER = "ca.der"
CA_KEY = Path("ca-private") / "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
CLIENTS = "clients"


@dataclass(frozen=True)
class CertPaths:
    """Where ``init`` put the CA and the server's files."""

    dir: Path
    ca_cert: Path
    ca_der: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class ClientPaths:
    """A device's files: PEM for CPython and mosquitto_pub, DER for MicroPython."""

    name: str
    cert: Path
    key: Path
    cert_der: Path
    key_der: Path


def paths(directory: str | os.PathLike[str], ca_key: str | os.PathLike[str] | None = None) -> CertPaths:
    base = Path(directory)
    return CertPaths(
        dir=base,
        ca_cert=base / CA_CERT,
        ca_der=base / CA_DER,
        ca_key=Path(ca_key) if ca_key is not None else base / CA_KEY,
        server_cert=base / SERVER_CERT,
        server_key=base / SERVER_KEY,
    )


def client_paths(directory: str | os.PathLike[str], name: str) -> ClientPaths:
    check_client_name(name)
    folder = Path(directory) / CLIENTS
    return ClientPaths(
        name=name,
        cert=folder / f"{name}.crt",
        key=folder / f"{name}.key",
        cert_der=folder / f"{name}.der",
        key_der=folder / f"{name}.key.der",
    )


# ---- writing ----------------------------------------------------------------------------


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically; the file never exists with a wider mode than ``mode``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CertError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600; certificates are world-readable
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_der(key: PrivateKey) -> bytes:
    # SEC1 / PKCS#1 ("traditional"): what every mbedTLS and axTLS release parses.
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def write_key(path: Path, key: PrivateKey, der: Path | None = None) -> None:
    write_file(path, key_pem(key), KEY_MODE)
    if der is not None:
        write_file(der, key_der(key), KEY_MODE)


def write_cert(path: Path, cert: x509.Certificate, der: Path | None = None) -> None:
    write_file(path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    if der is not None:
        write_file(der, cert.public_bytes(serialization.Encoding.DER), CERT_MODE)


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, PRIVATE_DIR_MODE)
    except OSError as exc:
        raise CertError(f"{path}: cannot make the directory: {exc.strerror or exc}") from None


# ---- reading ----------------------------------------------------------------------------


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{path}: no such file ({what})") from None
    except OSError as exc:
        raise CertError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Every certificate in a PEM file (a chain), or the one in a DER file."""
    file = Path(path)
    data = read_bytes(file, "certificate")
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        if b"PRIVATE KEY-----" in data:
            raise CertError(f"{file}: this is a private key, not a certificate") from None
        raise CertError(f"{file}: not a PEM or DER certificate") from None
    return certs


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    return load_certificates(path)[0]


def load_key(path: str | os.PathLike[str]) -> PrivateKey:
    file = Path(path)
    data = read_bytes(file, "private key")
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise CertError(f"{file}: the key is encrypted; give an unencrypted key") from None
    except ValueError:
        raise CertError(f"{file}: not a PEM or DER private key") from None
    key_type_of(key)  # only ECDSA and RSA
    return key  # type: ignore[return-value]  # checked by key_type_of


def load_ca(cert_paths: CertPaths) -> Issued:
    """The CA's certificate and key, checked to belong together."""
    if not cert_paths.ca_key.exists():
        raise CertError(
            f"{cert_paths.ca_key}: the CA private key is not there. If you moved it off the "
            "gateway, give its path with --ca-key"
        )
    ca = Issued(load_certificate(cert_paths.ca_cert), load_key(cert_paths.ca_key))
    if not same_public_key(ca.cert, ca.key):
        raise CertError(f"{cert_paths.ca_key} is not the key of the CA certificate {cert_paths.ca_cert}")
    return ca


# ---- the commands, as functions ---------------------------------------------------------


def init(
    directory: str | os.PathLike[str],
    hosts: list[str] | tuple[str, ...] = (),
    ips: list[str] | tuple[str, ...] = (),
    key_type: KeyType = "ecdsa",
    ca_days: int = CA_DAYS,
    server_days: int = SERVER_DAYS,
    ca_name: str = "edgemq CA",
    ca_key: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> CertPaths:
    """A new CA and a server certificate for ``hosts`` and ``ips`` in ``directory``."""
    where = paths(directory, ca_key)
    existing = [p for p in (where.ca_cert, where.ca_key, where.server_cert, where.server_key) if p.exists()]
    if existing and not force:
        raise CertError(
            f"{existing[0]} already exists: this directory has a CA. Use 'certs client' or "
            "'certs renew' with it, or --force to replace everything (every certificate it "
            "issued stops being trusted)"
        )
    ca = make_ca(ca_name, key_type, ca_days)
    server = make_server_cert(ca, hosts, ips, key_type, server_days)
    _make_private_dir(where.ca_key.parent)
    write_key(where.ca_key, ca.key)
    write_cert(where.ca_cert, ca.cert, where.ca_der)
    write_key(where.server_key, server.key)
    write_cert(where.server_cert, server.cert)
    return where


def issue_client(
    directory: str | os.PathLike[str],
    name: str,
    key_type: KeyType = "ecdsa",
    days: int = CLIENT_DAYS,
    ca_key: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> ClientPaths:
    """A device certificate and key signed by the directory's CA."""
    files = client_paths(directory, name)
    if files.cert.exists() and not force:
        raise CertError(
            f"{files.cert} already exists: renew it with 'certs renew {name}', "
            "or use --force to issue a new key"
        )
    ca = load_ca(paths(directory, ca_key))
    client = make_client_cert(ca, name, key_type, days)
    write_key(files.key, client.key, files.key_der)
    write_cert(files.cert, client.cert, files.cert_der)
    return files


@dataclass(frozen=True)
class Renewed:
    cert: Path
    old_expiry: str
    new_expiry: str
    new_key: bool


@dataclass(frozen=True)
class TargetFiles:
    """The files of one certificate that ``renew`` rewrites."""

    cert: Path
    key: Path
    cert_der: Path | None
    key_der: Path | None


def target_files(
    directory: str | os.PathLike[str], target: str, ca_key: str | os.PathLike[str] | None = None
) -> TargetFiles:
    """The files of "server", "ca", a device name, or a certificate file (its key beside it)."""
    where = paths(directory, ca_key)
    if target == "server":
        return TargetFiles(where.server_cert, where.server_key, None, None)
    if target == "ca":
        return TargetFiles(where.ca_cert, where.ca_key, where.ca_der, None)
    if target.endswith((".crt", ".pem")) or os.sep in target:
        cert = Path(target)
        der = cert.with_suffix(".der")
        key_der_file = cert.with_suffix(".key.der")
        return TargetFiles(
            cert,
            cert.with_suffix(".key"),
            der if der.exists() else None,
            key_der_file if key_der_file.exists() else None,
        )
    files = client_paths(directory, target)
    if not files.cert.exists():
        raise CertError(
            f"no certificate for {target!r}: {files.cert} does not exist "
            "(targets are 'server', 'ca', a device name or a .crt file)"
        )
    return TargetFiles(files.cert, files.key, files.cert_der, files.key_der)


def renew(
    directory: str | os.PathLike[str],
    target: str = "server",
    days: int | None = None,
    new_key: bool = False,
    ca_key: str | os.PathLike[str] | None = None,
) -> Renewed:
    """Re-issue a certificate with its names, new dates; the CA stays, so clients keep trusting it.

    ``ca`` renews the CA certificate itself with the same key and subject: certificates it
    issued stay valid, devices just need the new ca.crt before the old one expires.
    """
    where = paths(directory, ca_key)
    files = target_files(directory, target, ca_key)
    cert_file, key_file, der_file, key_der_file = files.cert, files.key, files.cert_der, files.key_der
    old = load_certificate(cert_file)
    ca = load_ca(where)
    if target == "ca":
        if new_key:
            raise CertError("a new CA key would untrust every certificate: run 'certs init --force' for that")
        new = renew_cert(old, None, days or CA_DAYS, ca.key)
        write_cert(cert_file, new, der_file)
    else:
        if not issued_by(old, ca.cert):
            raise CertError(f"{cert_file} was not issued by the CA in {where.ca_cert}")
        key = generate_key(key_type_of(old.public_key())) if new_key else load_key(key_file)
        if not new_key and not same_public_key(old, key):
            raise CertError(f"{key_file} is not the key of {cert_file}")
        default_days = SERVER_DAYS if target == "server" else CLIENT_DAYS
        new = renew_cert(old, ca, days or default_days, key)
        if new_key:  # the key first: a reload between the two sees a mismatch and keeps the old pair
            write_key(key_file, key, key_der_file)
        write_cert(cert_file, new, der_file)
    return Renewed(
        cert=cert_file,
        old_expiry=f"{old.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        new_expiry=f"{new.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        new_key=new_key,
    )
