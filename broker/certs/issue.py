"""Keys and certificates in memory: a private CA, server and device certificates.

No files here (``store.py`` writes them), so tests and other tools can issue what they need
directly. Everything is made with ``cryptography``; the choices follow what TLS stacks
check today (OpenSSL's strict verification, browsers, mbedTLS on microcontrollers):
key usage on every certificate, subject and authority key identifiers, serverAuth or
clientAuth in the extended key usage, and names only in subjectAltName for servers.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ecdsa", "rsa"]
KEY_TYPES: tuple[KeyType, ...] = ("ecdsa", "rsa")
PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

RSA_BITS = 2048
# A CA lives long because re-distributing it to every device is the expensive part. Leaf
# certificates stay within 825 days, the longest that Apple's TLS stack accepts from a private
# CA, and are renewed with ``certs renew`` (the broker re-reads them on SIGHUP).
CA_DAYS = 3650
SERVER_DAYS = 825
CLIENT_DAYS = 825
# Clocks of devices that just booted lag; a certificate valid "from now" would be refused.
BACKDATE = datetime.timedelta(hours=1)

# A device name becomes a file name and the certificate's CN (and with use_identity_as_username
# the MQTT user name): letters, digits and a few separators, no path characters.
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class CertError(Exception):
    """A problem the operator can fix; the message says what and where."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey


def generate_key(key_type: KeyType = "ecdsa") -> PrivateKey:
    """ECDSA P-256 by default: small and fast on microcontrollers' mbedTLS; RSA 2048 for old stacks."""
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise CertError(f"unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")


def key_type_of(key: object) -> KeyType:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ecdsa"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa"
    raise CertError(f"unsupported key type {type(key).__name__}: only ECDSA and RSA keys are used")


def split_names(names: Iterable[str]) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """Host names and IP addresses, each checked; an address given as a host name counts as an IP."""
    hosts: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for name in names:
        text = name.strip()
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            hosts.append(check_host_name(text))
        else:
            if ip not in ips:
                ips.append(ip)
    return list(dict.fromkeys(hosts)), ips


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise CertError(f"not an IP address: {text!r} (give host names with --host)") from None


def check_host_name(name: str) -> str:
    """A DNS name as it goes into subjectAltName: ASCII labels, an optional leading ``*.``."""
    try:
        ascii_name = name.encode("idna").decode("ascii") if name else ""
    except UnicodeError:
        raise CertError(f"not a valid host name: {name!r}") from None
    labels = ascii_name.rstrip(".").split(".")
    if labels and labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if not ascii_name or len(ascii_name) > 253 or not all(DNS_LABEL.match(label) for label in labels):
        raise CertError(
            f"not a valid host name: {name!r} (letters, digits and '-' in dot-separated labels)"
        )
    return ascii_name.rstrip(".").lower()


def check_client_name(name: str) -> str:
    if not CLIENT_NAME.match(name):
        raise CertError(
            f"not a valid device name: {name!r} (1 to 64 letters, digits, '.', '_', '-', '@', '+'; "
            "it becomes the certificate's CN and a file name)"
        )
    return name


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _key_usage(key: PrivateKey, *, ca: bool) -> x509.KeyUsage:
    # RSA key exchange (TLS 1.2 RSA suites) needs keyEncipherment; ECDSA keys only sign.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca and isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name,
    issuer: Issued | None,
    key: PrivateKey,
    days: int,
) -> x509.CertificateBuilder:
    if days < 1:
        raise CertError(f"validity must be at least 1 day, got {days}")
    not_before = _now() - BACKDATE
    not_after = not_before + BACKDATE + datetime.timedelta(days=days)
    if issuer is not None:
        # A certificate that outlives its CA would fail at the CA's expiry anyway: say so now.
        ca_end = issuer.cert.not_valid_after_utc
        if not_after > ca_end:
            not_after = ca_end
        if not_after <= _now():
            raise CertError(
                f"the CA expired on {ca_end:%Y-%m-%d}: renew it first (certs renew ca)"
            )
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(ski, critical=False)
    )
    if issuer is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    else:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
    return builder.add_extension(aki, critical=False)


def _sign(builder: x509.CertificateBuilder, signer: PrivateKey) -> x509.Certificate:
    return builder.sign(signer, hashes.SHA256())


def make_ca(
    common_name: str = "edgemq CA",
    key_type: KeyType = "ecdsa",
    days: int = CA_DAYS,
    key: PrivateKey | None = None,
) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = key or generate_key(key_type)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgemq"),
        ]
    )
    builder = (
        _builder(subject, None, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key, ca=True), critical=True)
    )
    return Issued(_sign(builder, key), key)


def subject_alt_names(
    hosts: Sequence[str], ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    general += [x509.IPAddress(ip) for ip in ips]
    return x509.SubjectAlternativeName(general)


def make_server_cert(
    ca: Issued,
    hosts: Sequence[str] = (),
    ips: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    key_type: KeyType = "ecdsa",
    days: int = SERVER_DAYS,
    key: PrivateKey | None = None,
) -> Issued:
    """The broker's certificate: every name and address clients connect to, in subjectAltName."""
    host_names, host_ips = split_names(hosts)
    all_ips = list(host_ips)
    for ip in ips:
        parsed = ip if not isinstance(ip, str) else parse_ip(ip)
        if parsed not in all_ips:
            all_ips.append(parsed)
    if not host_names and not all_ips:
        raise CertError("a server certificate needs at least one --host or --ip")
    key = key or generate_key(key_type)
    common_name = host_names[0] if host_names else str(all_ips[0])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(key, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(subject_alt_names(host_names, all_ips), critical=False)
    )
    return Issued(_sign(builder, ca.key), key)


def make_client_cert(
    ca: Issued,
    name: str,
    key_type: KeyType = "ecdsa",
    days: int = CLIENT_DAYS,
    key: PrivateKey | None = None,
) -> Issued:
    """A device certificate: its CN is the device name (the user name with use_identity_as_username)."""
    check_client_name(name)
    key = key or generate_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        _builder(subject, ca, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(key, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    return Issued(_sign(builder, ca.key), key)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """The CA's key signed ``cert`` (not merely a matching issuer name)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def renew_cert(
    old: x509.Certificate,
    ca: Issued | None,
    days: int,
    key: PrivateKey,
) -> x509.Certificate:
    """A new certificate with the subject and extensions of ``old``, new dates and serial.

    ``ca`` None renews a self-signed CA with its own key: certificates it issued keep
    verifying, because the subject and the key do not change.
    """
    if key_type_of(key) != key_type_of(old.public_key()):
        raise CertError("a renewed certificate keeps its key type: issue a new certificate instead")
    if ca is None:
        signer = Issued(old, key)
        builder = _builder(old.subject, None, key, days)
    else:
        signer = ca
        builder = _builder(old.subject, ca, key, days)
    for extension in old.extensions:
        if isinstance(extension.value, (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier)):
            continue  # made afresh by _builder from the (possibly new) keys
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return _sign(builder, signer.key)
