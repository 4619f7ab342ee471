"""TLS via the platform's ssl module (mbedTLS on the MicroPython Unix port, OpenSSL on
CPython) against mosquitto with a certificate from a throwaway CA."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from brokerprocess import free_port
from edge_harness import Runtime


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificates")
    d = tmp_path_factory.mktemp("certs")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "2", "-subj", "/CN=edge_client test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.crt", "-days", "2", "-extfile", "san.ext"],
    ]
    for step in steps:
        res = subprocess.run([openssl, *step], cwd=d, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    return d


def test_tls_connection_with_certificate_check(
    runtime: Runtime, mosquitto_factory, certs: Path  # type: ignore[no-untyped-def]
) -> None:
    tls_port = free_port()
    broker = mosquitto_factory(
        config=(
            f"listener {tls_port} 127.0.0.1\n"
            f"certfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n"
        )
    )
    cid = f"tls-{runtime.name}"
    prog = runtime.run("tls_echo.py", broker.host, tls_port, cid, certs / "ca.crt")
    assert prog.got() == [(f"edge/{cid}/echo", 1, 0, "over tls")], prog.output()


def test_tls_refuses_a_broker_it_cannot_verify(
    runtime: Runtime, mosquitto_factory, certs: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    tls_port = free_port()
    broker = mosquitto_factory(
        config=f"listener {tls_port} 127.0.0.1\ncertfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n"
    )
    other = tmp_path / "other-ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "o.key"),
         "-out", str(other), "-days", "2", "-subj", "/CN=someone else"],
        check=True, capture_output=True, timeout=60,
    )
    prog = runtime.start("tls_echo.py", broker.host, tls_port, "tls-bad-" + runtime.name, other)
    assert prog.wait(30) != 0
    assert "DONE" not in "\n".join(prog.lines), prog.output()
