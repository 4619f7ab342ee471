"""A certificate in words, for ``certs show`` and for log lines: subject, names, expiry."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from broker.certs.issue import is_ca


def expires_in(cert: x509.Certificate, now: datetime.datetime | None = None) -> datetime.timedelta:
    """Time left until ``notAfter``; negative once expired."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return cert.not_valid_after_utc - now


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    """``DNS:name`` and ``IP:address`` entries, in the certificate's order (openssl's spelling)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = []
    for general in san:
        if isinstance(general, x509.DNSName):
            names.append(f"DNS:{general.value}")
        elif isinstance(general, x509.IPAddress):
            names.append(f"IP:{general.value}")
        elif isinstance(general, x509.RFC822Name):
            names.append(f"email:{general.value}")
        elif isinstance(general, x509.UniformResourceIdentifier):
            names.append(f"URI:{general.value}")
        else:
            names.append(str(general.value))
    return names


def describe_key(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ECDSA {public_key.curve.name} ({public_key.curve.key_size} bits)"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size} bits"
    return type(public_key).__name__


USAGE_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


def _extended_usage(cert: x509.Certificate) -> str:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "any"
    return ", ".join(USAGE_NAMES.get(oid, oid.dotted_string) for oid in usage)


def _when(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def expiry_text(cert: x509.Certificate, now: datetime.datetime | None = None) -> str:
    left = expires_in(cert, now)
    end = _when(cert.not_valid_after_utc)
    if left.total_seconds() <= 0:
        return f"{end} (EXPIRED {(-left).days} days ago)"
    return f"{end} (in {left.days} days)"


def describe(cert: x509.Certificate, now: datetime.datetime | None = None) -> list[str]:
    """Aligned ``label: value`` lines."""
    sans = subject_alt_names(cert)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    rows = [
        ("subject", cert.subject.rfc4514_string()),
        ("issuer", cert.issuer.rfc4514_string()),
        ("serial", format(cert.serial_number, "x")),
        ("key", describe_key(cert.public_key())),
        ("CA", "yes" if is_ca(cert) else "no"),
        ("usage", _extended_usage(cert)),
        ("SANs", ", ".join(sans) if sans else "(none)"),
        ("valid from", _when(cert.not_valid_before_utc)),
        ("expires", expiry_text(cert, now)),
        ("SHA-256", fingerprint),
    ]
    return [f"{label + ':':<12} {value}" for label, value in rows]
