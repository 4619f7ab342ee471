"""``python -m broker certs``: the certificates it makes work in real TLS and agree with openssl.

The oracles are the standard library's ssl (a real mutual-TLS handshake over 127.0.0.1),
the openssl command line (verify, x509 -text, pkey) and the names the test asked for.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from broker import certs

from brokerprocess import REPO_ROOT, subprocess_env

KEY_TYPES = ["ecdsa", "rsa"]


def run_certs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "certs", *args],
        cwd=cwd or REPO_ROOT,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def openssl(*args: str) -> str:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---- a real TLS handshake ---------------------------------------------------------------


class TLSServer:
    """An ssl server socket on 127.0.0.1 answering one line per connection, in a thread.

    It records the client certificate's subject it saw, or the handshake error.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.results: list[object] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(20)
        try:
            raw, _ = self.sock.accept()
        except OSError as exc:
            self.results.append(exc)
            self.done.set()
            return
        raw.settimeout(20)
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                peer = tls.getpeercert()
                tls.sendall(b"hello " + tls.recv(100))
                self.results.append(peer)
        except (ssl.SSLError, OSError) as exc:
            self.results.append(exc)
            raw.close()
        self.done.set()

    def result(self) -> object:
        assert self.done.wait(20), "the TLS server saw no connection"
        return self.results[0]

    def close(self) -> None:
        self.sock.close()
        self.thread.join(20)


def server_context(where: certs.CertPaths, require_client_cert: bool = True) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(where.server_cert, where.server_key)
    context.load_verify_locations(cafile=where.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    # What Python 3.13's default context checks; OpenSSL 3 honours it on 3.11 too.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def client_context(ca_cert: Path, client: certs.ClientPaths | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_cert))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def handshake(
    where: certs.CertPaths, client: certs.ClientPaths | None, server_hostname: str,
    ca_cert: Path | None = None,
) -> tuple[object, bytes | Exception]:
    """(what the server saw, what the client read or the client's error)."""
    server = TLSServer(server_context(where))
    try:
        context = client_context(ca_cert or where.ca_cert, client)
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as raw:
                with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    tls.sendall(b"world")
                    answer: bytes | Exception = tls.recv(100)
        except (ssl.SSLError, OSError) as exc:
            answer = exc
        return server.result(), answer
    finally:
        server.close()


def subject_cn(peer: object) -> str:
    assert isinstance(peer, dict), peer
    return dict(item[0] for item in peer["subject"])["commonName"]


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_mutual_tls_handshake_by_name_and_by_ip(tmp_path: Path, key_type: str) -> None:
    where = certs.init(tmp_path, hosts=["localhost"], ips=["127.0.0.1"], key_type=key_type)  # type: ignore[arg-type]
    device = certs.issue_client(tmp_path, "sensor-1", key_type=key_type)  # type: ignore[arg-type]
    for server_hostname in ("localhost", "127.0.0.1"):  # a DNS SAN and an IP SAN
        peer, answer = handshake(where, device, server_hostname)
        assert answer == b"hello world"
        assert subject_cn(peer) == "sensor-1"


def test_mixed_key_types_handshake(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["localhost"], ips=["127.0.0.1"], key_type="rsa")
    device = certs.issue_client(tmp_path, "ecdsa-device", key_type="ecdsa")
    peer, answer = handshake(where, device, "127.0.0.1")
    assert answer == b"hello world" and subject_cn(peer) == "ecdsa-device"


def test_name_not_in_the_certificate_is_refused_by_the_client(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["pi.local"], ips=["192.168.1.10"])
    device = certs.issue_client(tmp_path, "d1")
    _, answer = handshake(where, device, "127.0.0.1")
    assert isinstance(answer, ssl.SSLCertVerificationError)
    assert "IP address mismatch" in str(answer) or "doesn't match" in str(answer)


def test_server_refuses_a_client_without_certificate_or_from_another_ca(tmp_path: Path) -> None:
    where = certs.init(tmp_path / "site", hosts=["localhost"], ips=["127.0.0.1"])
    certs.init(tmp_path / "other", hosts=["localhost"])
    stranger = certs.issue_client(tmp_path / "other", "stranger")
    for client in (None, stranger):
        seen, answer = handshake(where, client, "localhost")
        assert isinstance(seen, ssl.SSLError), seen  # the server refused the handshake
        # TLS 1.3: the client learns of it when it reads.
        assert isinstance(answer, (ssl.SSLError, OSError)), answer


def test_client_refuses_a_server_of_another_ca(tmp_path: Path) -> None:
    where = certs.init(tmp_path / "site", hosts=["localhost"])
    other = certs.init(tmp_path / "other", hosts=["localhost"])
    device = certs.issue_client(tmp_path / "site", "d1")
    _, answer = handshake(where, device, "localhost", ca_cert=other.ca_cert)
    assert isinstance(answer, ssl.SSLCertVerificationError)


# ---- agreement with openssl -------------------------------------------------------------


def openssl_sans(cert: Path) -> list[str]:
    text = openssl("x509", "-in", str(cert), "-noout", "-text")
    match = re.search(r"X509v3 Subject Alternative Name:.*\n\s*(.+)\n", text)
    assert match, text
    return [item.strip() for item in match.group(1).split(",")]


def openssl_ip(address: str) -> str:
    """How ``openssl x509 -text`` spells an IP address SAN."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return f"IP Address:{ip}"
    return "IP Address:" + ":".join(f"{int(group, 16):X}" for group in ip.exploded.split(":"))


def test_openssl_reads_the_requested_subject_alt_names(tmp_path: Path) -> None:
    hosts = ["pi.local", "gateway.example.com", "localhost"]
    ips = ["192.168.1.10", "10.0.0.1", "::1", "fd00::17"]
    where = certs.init(tmp_path, hosts=hosts, ips=ips)
    expected = [f"DNS:{h}" for h in hosts] + [openssl_ip(ip) for ip in ips]
    assert openssl_sans(where.server_cert) == expected
    text = openssl("x509", "-in", str(where.server_cert), "-noout", "-text")
    assert "Subject: CN = pi.local" in text
    assert "TLS Web Server Authentication" in text
    assert "ASN1 OID: prime256v1" in text
    # Our own description says the same.
    ours = certs.subject_alt_names(certs.load_certificate(where.server_cert))
    assert ours == [f"DNS:{h}" for h in hosts] + [f"IP:{ipaddress.ip_address(i)}" for i in ips]


def test_an_ip_given_as_host_goes_into_the_ip_sans(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["192.168.7.2", "pi"])
    assert openssl_sans(where.server_cert) == ["DNS:pi", "IP Address:192.168.7.2"]


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_openssl_verifies_every_certificate_strictly(tmp_path: Path, key_type: str) -> None:
    where = certs.init(tmp_path, hosts=["localhost"], key_type=key_type)  # type: ignore[arg-type]
    device = certs.issue_client(tmp_path, "dev", key_type=key_type)  # type: ignore[arg-type]
    ca = str(where.ca_cert)
    assert openssl("verify", "-x509_strict", "-CAfile", ca, "-purpose", "sslserver",
                   str(where.server_cert)).strip().endswith("OK")
    assert openssl("verify", "-x509_strict", "-CAfile", ca, "-purpose", "sslclient",
                   str(device.cert)).strip().endswith("OK")
    # A server certificate is no client certificate and the reverse.
    for purpose, cert in (("sslclient", where.server_cert), ("sslserver", device.cert)):
        wrong = subprocess.run(["openssl", "verify", "-CAfile", ca, "-purpose", purpose, str(cert)],
                               capture_output=True, text=True, timeout=30)
        assert wrong.returncode != 0
    text = openssl("x509", "-in", str(device.cert), "-noout", "-text")
    assert "Subject: CN = dev" in text
    assert ("RSA Public-Key: (2048 bit)" in text or "Public-Key: (2048 bit)" in text) == (key_type == "rsa")
    ca_text = openssl("x509", "-in", ca, "-noout", "-text")
    assert "CA:TRUE, pathlen:0" in ca_text and "Certificate Sign" in ca_text


def test_validity_periods(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["localhost"])
    device = certs.issue_client(tmp_path, "d")
    now = datetime.datetime.now(datetime.timezone.utc)
    for path, days in ((where.ca_cert, certs.CA_DAYS), (where.server_cert, certs.SERVER_DAYS),
                       (device.cert, certs.CLIENT_DAYS)):
        cert = certs.load_certificate(path)
        assert cert.not_valid_before_utc < now  # backdated for devices with a lagging clock
        left = cert.not_valid_after_utc - now
        assert datetime.timedelta(days=days - 1) < left <= datetime.timedelta(days=days)
    # A certificate never outlives its CA.
    short = certs.init(tmp_path / "short", hosts=["x"], ca_days=30, server_days=400)
    assert certs.load_certificate(short.server_cert).not_valid_after_utc == \
        certs.load_certificate(short.ca_cert).not_valid_after_utc


# ---- files: modes, DER, layout ----------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_keys_are_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        where = certs.init(tmp_path, hosts=["localhost"])
        device = certs.issue_client(tmp_path, "d")
        certs.renew(tmp_path, "d", new_key=True)
    finally:
        os.umask(old)
    for key in (where.ca_key, where.server_key, device.key, device.key_der):
        assert mode(key) == 0o600, key
    for cert in (where.ca_cert, where.ca_der, where.server_cert, device.cert, device.cert_der):
        assert mode(cert) == 0o644, cert
    assert mode(where.ca_key.parent) == 0o700
    # The CA key is not beside the server key: its folder can be moved off the gateway whole.
    assert where.ca_key.parent != where.server_key.parent
    assert not list(tmp_path.rglob("*.tmp"))


def test_der_files_parse_and_match_the_pem_files(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["localhost"], ips=["127.0.0.1"])
    for key_type in KEY_TYPES:
        device = certs.issue_client(tmp_path, f"board-{key_type}", key_type=key_type)  # type: ignore[arg-type]
        pem_cert = openssl("x509", "-in", str(device.cert), "-noout", "-fingerprint", "-sha256")
        der_cert = openssl("x509", "-inform", "DER", "-in", str(device.cert_der), "-noout",
                           "-fingerprint", "-sha256")
        assert pem_cert == der_cert
        pem_pub = openssl("pkey", "-in", str(device.key), "-pubout")
        der_pub = openssl("pkey", "-inform", "DER", "-in", str(device.key_der), "-pubout")
        assert pem_pub == der_pub
        cert_pub = openssl("x509", "-in", str(device.cert), "-noout", "-pubkey")
        assert cert_pub == pem_pub
    # The DER CA is what a MicroPython board passes as cadata: the ssl module takes it as is.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=where.ca_der.read_bytes())
    assert context.cert_store_stats()["x509_ca"] == 1


MICROPYTHON_CLIENT = """
import ssl, socket, sys
ca_der, cert_der, key_der, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(cadata=open(ca_der, "rb").read())
ctx.load_cert_chain(open(cert_der, "rb").read(), open(key_der, "rb").read())
sock = socket.socket()
sock.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
tls = ctx.wrap_socket(sock, server_hostname="localhost")
tls.write(b"world")
print(tls.read(11))
"""


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_micropython_uses_the_der_files_for_mutual_tls(tmp_path: Path, key_type: str) -> None:
    """The MicroPython Unix port (mbedTLS, as on boards) loads the DER files and is let in."""
    where = certs.init(tmp_path, hosts=["localhost"], ips=["127.0.0.1"], key_type=key_type)  # type: ignore[arg-type]
    board = certs.issue_client(tmp_path, "board-7", key_type=key_type)  # type: ignore[arg-type]
    script = tmp_path / "client.py"
    script.write_text(MICROPYTHON_CLIENT)
    server = TLSServer(server_context(where))
    try:
        result = subprocess.run(
            ["micropython", str(script), str(where.ca_der), str(board.cert_der), str(board.key_der),
             str(server.port)],
            capture_output=True, text=True, timeout=60,
        )
        peer = server.result()
    finally:
        server.close()
    assert result.stdout.strip() == "b'hello world'", result.stdout + result.stderr
    assert subject_cn(peer) == "board-7"


# ---- renew ------------------------------------------------------------------------------


def test_renew_keeps_the_ca_and_the_names(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["localhost", "pi.local"], ips=["127.0.0.1"])
    device = certs.issue_client(tmp_path, "sensor-1")
    ca_before = where.ca_cert.read_bytes()
    server_before = certs.load_certificate(where.server_cert)
    server_key_before = where.server_key.read_bytes()
    device_before = certs.load_certificate(device.cert)
    device_key_before = device.key.read_bytes()

    result = run_certs("renew", "--dir", str(tmp_path), "--days", "90", "server", "sensor-1")
    assert result.returncode == 0, result.stderr

    assert where.ca_cert.read_bytes() == ca_before
    server_after = certs.load_certificate(where.server_cert)
    assert server_after.serial_number != server_before.serial_number
    assert server_after.subject == server_before.subject
    assert certs.subject_alt_names(server_after) == certs.subject_alt_names(server_before)
    left = server_after.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=89) < left <= datetime.timedelta(days=90)
    assert where.server_key.read_bytes() == server_key_before  # same key unless --new-key
    device_after = certs.load_certificate(device.cert)
    assert device_after.serial_number != device_before.serial_number
    assert device.key.read_bytes() == device_key_before
    # The DER copy follows the PEM one.
    assert certs.load_certificate(device.cert_der) == device_after
    # Clients holding the old ca.crt still connect.
    peer, answer = handshake(where, device, "localhost")
    assert answer == b"hello world" and subject_cn(peer) == "sensor-1"


def test_renew_with_a_new_key(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["localhost"])
    device = certs.issue_client(tmp_path, "d")
    old_key = device.key.read_bytes()
    old_der = device.key_der.read_bytes()
    certs.renew(tmp_path, "d", new_key=True)
    assert device.key.read_bytes() != old_key and device.key_der.read_bytes() != old_der
    peer, answer = handshake(where, device, "localhost")
    assert answer == b"hello world"


def test_renewed_ca_still_verifies_what_the_old_one_issued(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["localhost"])
    device = certs.issue_client(tmp_path, "d")
    old_ca = tmp_path / "old-ca.crt"
    old_ca.write_bytes(where.ca_cert.read_bytes())
    certs.renew(tmp_path, "ca", days=5000)
    assert where.ca_cert.read_bytes() != old_ca.read_bytes()
    assert certs.load_certificate(where.ca_der) == certs.load_certificate(where.ca_cert)
    for cert in (where.server_cert, device.cert):
        assert openssl("verify", "-x509_strict", "-CAfile", str(where.ca_cert), str(cert)).strip().endswith("OK")
    # And what the renewed CA issues verifies with the old ca.crt still on devices.
    certs.renew(tmp_path, "server")
    assert openssl("verify", "-CAfile", str(old_ca), str(where.server_cert)).strip().endswith("OK")


def test_renew_within_renews_only_what_expires_soon(tmp_path: Path) -> None:
    certs.init(tmp_path, hosts=["localhost"])
    certs.issue_client(tmp_path, "soon", days=10)
    certs.issue_client(tmp_path, "later")
    before = {name: certs.load_certificate(certs.client_paths(tmp_path, name).cert).serial_number
              for name in ("soon", "later")}
    result = run_certs("renew", "--dir", str(tmp_path), "--within", "30", "soon", "later")
    assert result.returncode == 0, result.stderr
    after = {name: certs.load_certificate(certs.client_paths(tmp_path, name).cert).serial_number
             for name in ("soon", "later")}
    assert after["soon"] != before["soon"] and after["later"] == before["later"]
    assert "not renewed" in result.stdout


def test_renew_refuses_a_certificate_of_another_ca(tmp_path: Path) -> None:
    certs.init(tmp_path / "a", hosts=["localhost"])
    other = certs.init(tmp_path / "b", hosts=["localhost"])
    with pytest.raises(certs.CertError, match="not issued by the CA"):
        certs.renew(tmp_path / "a", str(other.server_cert))


# ---- the command line -------------------------------------------------------------------


def test_cli_from_nothing_to_mutual_tls(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    init = run_certs("init", "--dir", str(directory), "--host", "localhost", "--ip", "127.0.0.1")
    assert init.returncode == 0, init.stderr
    assert "warning:" in init.stderr and "off the gateway" in init.stderr
    assert "DNS:localhost, IP:127.0.0.1" in init.stdout
    client = run_certs("client", "dev-7", "--dir", str(directory), "--rsa")
    assert client.returncode == 0, client.stderr
    where = certs.paths(directory)
    device = certs.client_paths(directory, "dev-7")
    assert "rsaEncryption" in openssl("x509", "-in", str(device.cert), "-noout", "-text")
    peer, answer = handshake(where, device, "127.0.0.1")
    assert answer == b"hello world" and subject_cn(peer) == "dev-7"


def openssl_enddate(cert: Path) -> datetime.datetime:
    text = openssl("x509", "-in", str(cert), "-noout", "-enddate").strip()
    end = datetime.datetime.strptime(text.split("=", 1)[1], "%b %d %H:%M:%S %Y %Z")
    return end.replace(tzinfo=datetime.timezone.utc)


def test_show_prints_subject_sans_and_expiry(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["pi.local"], ips=["192.168.1.10"])
    device = certs.issue_client(tmp_path, "board")
    result = run_certs("show", str(where.server_cert), str(device.cert_der))
    assert result.returncode == 0, result.stderr
    server_part, device_part = result.stdout.split("\n\n")
    end = openssl_enddate(where.server_cert)
    assert f"expires:     {end:%Y-%m-%d %H:%M:%S} UTC (in {certs.SERVER_DAYS - 1} days)" in server_part
    assert "subject:     CN=pi.local" in server_part
    assert "SANs:        DNS:pi.local, IP:192.168.1.10" in server_part
    assert "subject:     CN=board" in device_part and "clientAuth" in device_part
    fingerprint = openssl("x509", "-in", str(device.cert), "-noout", "-fingerprint", "-sha256")
    assert fingerprint.strip().split("=", 1)[1] in device_part


def test_show_says_expired(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["x"])
    cert = certs.load_certificate(where.server_cert)
    later = cert.not_valid_after_utc + datetime.timedelta(days=3, hours=1)
    assert "EXPIRED 3 days ago" in "\n".join(certs.describe(cert, now=later))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["init", "--host", "bad_name!"], "not a valid host name: 'bad_name!'"),
        (["init", "--ip", "300.1.2.3"], "not an IP address: '300.1.2.3'"),
        (["client", "../escape"], "not a valid device name"),
        (["client", "dev"], "the CA private key is not there"),
        (["renew", "nobody"], "no certificate for 'nobody'"),
    ],
)
def test_cli_errors_are_clear(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_certs(*args, "--dir", str(tmp_path / "empty"))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_errors_on_files(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["x"])
    again = run_certs("init", "--dir", str(tmp_path), "--host", "x")
    assert again.returncode == 1 and "already exists" in again.stderr
    for file, message in ((where.server_key, "this is a private key, not a certificate"),
                          (tmp_path / "missing.crt", "no such file"),
                          (REPO_ROOT / "pyproject.toml", "not a PEM or DER certificate")):
        result = run_certs("show", str(file))
        assert result.returncode == 1 and str(file) in result.stderr and message in result.stderr
    # A moved CA key is found with --ca-key, and its absence named otherwise.
    moved = tmp_path / "offline-ca.key"
    where.ca_key.rename(moved)
    missing = run_certs("client", "d", "--dir", str(tmp_path))
    assert missing.returncode == 1 and "--ca-key" in missing.stderr
    found = run_certs("client", "d", "--dir", str(tmp_path), "--ca-key", str(moved))
    assert found.returncode == 0, found.stderr
    # A key that is not the CA's is refused.
    wrong = run_certs("client", "e", "--dir", str(tmp_path), "--ca-key", str(where.server_key))
    assert wrong.returncode == 1 and "is not the key of the CA certificate" in wrong.stderr


def test_cli_error_on_a_directory_it_cannot_make(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_certs("init", "--dir", str(blocker / "certs"), "--host", "x")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {blocker / 'certs'}") and "Not a directory" in result.stderr


def test_show_a_chain(tmp_path: Path) -> None:
    where = certs.init(tmp_path, hosts=["pi.local"])
    chain = tmp_path / "chain.pem"
    chain.write_bytes(where.server_cert.read_bytes() + where.ca_cert.read_bytes())
    result = run_certs("show", str(chain))
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("\n\n")
    assert "(certificate 1 of 2)" in first and "subject:     CN=pi.local" in first and "CA:          no" in first
    assert "(certificate 2 of 2)" in second and "subject:     O=edgemq,CN=edgemq CA" in second
    assert "CA:          yes" in second
