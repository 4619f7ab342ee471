"""A listener's TLS: an ``ssl.SSLContext`` built from its files, checked so that errors name the file.

OpenSSL's own errors ("[SSL] PEM lib (_ssl.c:3900)") do not tell an operator which
of three files is wrong, so each file is read and parsed first (with the loaders of
``broker.certs``), and the certificate and key are compared before OpenSSL loads them.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from broker.certs import CertError, load_certificates, load_key
from broker.certs.issue import same_public_key
from broker.config import ListenerConfig

EXPIRY_WARNING = datetime.timedelta(days=30)

_MINIMUM_VERSION = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}


class TLSFileError(Exception):
    """A certificate, key or CA file cannot be used; the message names the file and says why."""


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """What a TLS listener serves with: the context for new connections and its certificate's dates."""

    context: ssl.SSLContext
    subject: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    fingerprint: str  # SHA-256 of the server certificate, to tell a renewed one in the log
    ca_not_after: datetime.datetime | None = None  # the first CA certificate of cafile to expire


def _certificate(settings: ListenerConfig) -> x509.Certificate:
    """The server certificate (the first of the chain in certfile), checked against keyfile."""
    assert settings.certfile is not None and settings.keyfile is not None
    try:
        certificate = load_certificates(settings.certfile)[0]
    except CertError as exc:
        raise TLSFileError(f"certfile {exc}") from None
    try:
        key = load_key(settings.keyfile)
    except CertError as exc:
        raise TLSFileError(f"keyfile {exc}") from None
    if not same_public_key(certificate, key):
        raise TLSFileError(f"keyfile {settings.keyfile} is not the private key of certfile {settings.certfile}")
    return certificate


def _check_ca(settings: ListenerConfig) -> datetime.datetime | None:
    """Check the CA and CRL files; returns when the first CA certificate of cafile expires."""
    ca_not_after = None
    if settings.cafile is not None:
        try:
            authorities = load_certificates(settings.cafile)
        except CertError as exc:
            raise TLSFileError(f"cafile {exc}") from None
        ca_not_after = min(ca.not_valid_after_utc for ca in authorities)
    if settings.capath is not None and not os.path.isdir(settings.capath):
        raise TLSFileError(f"capath {settings.capath} is not a directory")
    if settings.crlfile is not None:
        data = _read_crl(settings.crlfile)
        try:
            x509.load_pem_x509_crl(data)
        except ValueError:
            raise TLSFileError(f"crlfile {settings.crlfile} holds no PEM certificate revocation list") from None
    return ca_not_after


def _read_crl(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as exc:
        raise TLSFileError(f"crlfile {path}: cannot read it: {exc.strerror or exc}") from None


def _no_password() -> str:
    raise TLSFileError("the key is encrypted")  # never prompt on the terminal of a daemon


def load_server_tls(settings: ListenerConfig, now: datetime.datetime | None = None) -> ServerTLS:
    """Build the context of a TLS listener from its files; TLSFileError if one cannot be used.

    An expired certificate is refused: every client would fail its handshake, and the
    operator would learn it from the devices instead of from the broker.
    """
    if settings.certfile is None or settings.keyfile is None:
        raise ValueError("not a TLS listener")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    certificate = _certificate(settings)
    not_after = certificate.not_valid_after_utc
    if not_after <= now:
        raise TLSFileError(
            f"certfile {settings.certfile} expired on {not_after:%Y-%m-%d %H:%M} UTC; renew it "
            "(python -m broker certs renew)"
        )
    ca_not_after = _check_ca(settings)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MINIMUM_VERSION[settings.tls_version]
    context.options |= ssl.OP_NO_RENEGOTIATION  # TLS 1.2 renegotiation: CPU for the client to burn
    if settings.ciphers is not None:
        try:
            context.set_ciphers(settings.ciphers)
        except ssl.SSLError:
            raise TLSFileError(f"ciphers {settings.ciphers!r}: OpenSSL knows none of these ciphers") from None
    try:
        context.load_cert_chain(settings.certfile, settings.keyfile, password=_no_password)
    except (ssl.SSLError, OSError) as exc:
        raise TLSFileError(f"certfile {settings.certfile} / keyfile {settings.keyfile}: {exc}") from None
    if settings.cafile is not None or settings.capath is not None:
        try:
            context.load_verify_locations(cafile=settings.cafile, capath=settings.capath)
        except (ssl.SSLError, OSError) as exc:
            where = settings.cafile if settings.cafile is not None else settings.capath
            raise TLSFileError(f"CA certificates {where}: {exc}") from None
    if settings.crlfile is not None:
        try:
            context.load_verify_locations(cafile=settings.crlfile)
        except (ssl.SSLError, OSError) as exc:
            raise TLSFileError(f"crlfile {settings.crlfile}: {exc}") from None
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    # As mosquitto: a certificate is asked for only when one is required.
    context.verify_mode = ssl.CERT_REQUIRED if settings.require_certificate else ssl.CERT_NONE
    return ServerTLS(
        context=context,
        subject=certificate.subject.rfc4514_string(),
        not_before=certificate.not_valid_before_utc,
        not_after=not_after,
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
        ca_not_after=ca_not_after,
    )

