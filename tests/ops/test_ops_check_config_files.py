"""``--check-config`` reads the files the configuration names, with the broker's own loaders:
every TLS listener's certificate, key, CA and CRL files, the password and ACL files, every
bridge's TLS files. Each problem names the listener or bridge and the file (and line)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from broker import certs
from broker.auth import hashing
from listeners.conftest import PKI, make_pki, write_crl, write_expired_certificate
from ops_helpers import run_broker_command


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _check(tmp_path: Path, toml: str):
    path = tmp_path / "site.toml"
    path.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n' + toml)
    return run_broker_command("--check-config", "-c", str(path))


def _listener(name_port: int, cert: Path, key: Path, extra: str = "") -> str:
    return f'[[listener]]\nport = {name_port}\ncertfile = "{cert}"\nkeyfile = "{key}"\n{extra}\n'


def _bridge(name: str, extra: str) -> str:
    return (f'[[bridge]]\nname = "{name}"\naddress = "upstream.example.com:8883"\n{extra}\n'
            '[[bridge.topic]]\npattern = "#"\ndirection = "out"\n')


def _errors(stderr: str) -> list[str]:
    return [line.strip().removeprefix("error: ") for line in stderr.splitlines() if line.strip().startswith("error:")]


def _write_certificate(pki: PKI, path: Path, days_left: float) -> None:
    """A server certificate for the PKI's key, signed by its CA, valid ``days_left`` more days."""
    ca_key = certs.load_key(certs.paths(pki.dir).ca_key)
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(certs.load_certificate(pki.ca).subject)
        .public_key(certs.load_key(pki.server_key).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days_left))
        .sign(ca_key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def test_good_files_pass(pki: PKI, tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    passwords.write_text(f"device-1:{hashing.create(b'secret')}\n")
    passwords.chmod(0o600)  # as python -m broker passwd writes it (0644 is warned about)
    acl = tmp_path / "acl"
    acl.write_text("user device-1\ntopic readwrite site/#\n")
    crl = tmp_path / "crl.pem"
    write_crl(pki, [], crl)
    toml = (
        _listener(8883, pki.server_cert, pki.server_key, f'cafile = "{pki.ca}"\ncrlfile = "{crl}"\n'
                  "require_certificate = true")
        + f'[auth]\npassword_file = "{passwords}"\nacl_file = "{acl}"\n'
        + _bridge("cloud", f'cafile = "{pki.ca}"\ncertfile = "{pki.client_cert}"\nkeyfile = "{pki.client_key}"')
    )
    result = _check(tmp_path, toml)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "warning" not in result.stderr


def test_every_bad_file_is_listed_with_its_listener_or_bridge(pki: PKI, tmp_path: Path) -> None:
    expired = tmp_path / "expired.crt"
    write_expired_certificate(pki, expired)
    missing = tmp_path / "missing.pem"
    not_a_crl = tmp_path / "not-a-crl.pem"
    not_a_crl.write_text("hello\n")
    passwords = tmp_path / "passwords"
    passwords.write_text(f"ok:{hashing.create(b'x')}\nbroken-line-without-hash\n")
    acl = tmp_path / "acl"
    acl.write_text("user a\ntopic read site/#\nallow everything\n")
    toml = (
        # The device's key is not the key of the server certificate; the CA file is missing too.
        _listener(8883, pki.server_cert, pki.client_key, f'cafile = "{missing}"')
        + _listener(8884, expired, pki.server_key)
        + _listener(8885, pki.server_cert, pki.server_key,
                    f'cafile = "{pki.ca}"\ncrlfile = "{not_a_crl}"\nrequire_certificate = true')
        + _listener(8886, pki.server_cert, tmp_path)  # a directory, not a key file
        + f'[auth]\npassword_file = "{passwords}"\nacl_file = "{acl}"\n'
        + _bridge("cloud", f'cafile = "{not_a_crl}"')
        + _bridge("cluster", f'cafile = "{pki.ca}"\ncertfile = "{pki.client_cert}"\nkeyfile = "{pki.server_key}"')
    )
    result = _check(tmp_path, toml)
    assert result.returncode == 2
    errors = _errors(result.stderr)
    assert f"{len(errors)} problems" in result.stderr

    def listed(*parts: str) -> None:
        assert any(all(part in error for part in parts) for error in errors), (parts, errors)

    listed("listener mqtt 127.0.0.1:8883", f"keyfile {pki.client_key} is not the private key of certfile")
    listed("listener mqtt 127.0.0.1:8883", f"cafile {missing}")
    listed("listener mqtt 127.0.0.1:8884", f"certfile {expired} expired on")
    listed("listener mqtt 127.0.0.1:8885", f"crlfile {not_a_crl}")
    listed("listener mqtt 127.0.0.1:8886", f"keyfile {tmp_path}")
    listed("[auth] password_file", f"{passwords}:2:")
    listed("[auth] acl_file", f"{acl}:3:", "unknown keyword 'allow'")
    listed("[[bridge]] cloud", f"cafile {not_a_crl}")
    listed("[[bridge]] cluster", f"certfile {pki.client_cert} / keyfile {pki.server_key}")
    assert len(errors) == 9, errors


def test_a_certificate_about_to_expire_is_a_warning(pki: PKI, tmp_path: Path) -> None:
    soon = tmp_path / "soon.crt"
    _write_certificate(pki, soon, days_left=10.5)
    result = _check(tmp_path, _listener(8883, soon, pki.server_key))
    assert result.returncode == 0, result.stderr
    assert f"listener mqtt 127.0.0.1:8883: certfile {soon} expires in 10 days" in result.stderr


def test_an_expired_bridge_client_certificate_is_a_problem(pki: PKI, tmp_path: Path) -> None:
    expired = tmp_path / "expired.crt"
    write_expired_certificate(pki, expired)  # the server key's certificate, expired
    result = _check(tmp_path, _bridge("cloud", f'cafile = "{pki.ca}"\ncertfile = "{expired}"\n'
                                               f'keyfile = "{pki.server_key}"'))
    assert result.returncode == 2
    assert f"[[bridge]] cloud: certfile {expired} expired on" in result.stderr


def test_missing_password_and_acl_files_are_both_listed(tmp_path: Path) -> None:
    result = _check(tmp_path, f'[auth]\npassword_file = "{tmp_path}/nope"\nacl_file = "{tmp_path}/nada"\n')
    assert result.returncode == 2
    assert _errors(result.stderr) == [
        f"[auth] password_file: {tmp_path}/nope: cannot read: No such file or directory",
        f"[auth] acl_file: {tmp_path}/nada: cannot read: No such file or directory",
    ]
