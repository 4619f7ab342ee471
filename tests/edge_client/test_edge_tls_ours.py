"""The edge client's TLS against our broker's TLS listeners, under MicroPython and CPython.

The CA, the broker's certificate and the device certificate come from the broker's
own tool (``broker.certs``), as a site would make them. MicroPython's mbedTLS gets
the DER files the tool writes for it; CPython the PEM ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from edge_harness import Runtime

from broker import certs
from brokerprocess import BrokerProcess


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("site-certs")
    certs.init(directory, hosts=["localhost"], ips=["127.0.0.1"])
    certs.issue_client(directory, "edge-device")
    return directory


def device_files(runtime: Runtime, site: Path) -> tuple[Path, Path, Path]:
    """(CA, certificate, key) in the format the runtime's TLS stack reads."""
    device = certs.client_paths(site, "edge-device")
    if runtime.name == "micropython":
        return certs.paths(site).ca_der, device.cert_der, device.key_der
    return certs.paths(site).ca_cert, device.cert, device.key


def tls_port(broker: BrokerProcess) -> int:
    match = broker.wait_for_log(r"mqtt over TLS \S+ .*listening on 127\.0\.0\.1:(\d+)")
    return int(match.group(1))


def start_tls_broker(broker_factory, site: Path, mutual: bool) -> tuple[BrokerProcess, int]:  # type: ignore[no-untyped-def]
    where = certs.paths(site)
    table = (
        f'[[listener]]\nport = 0\ncertfile = "{where.server_cert}"\nkeyfile = "{where.server_key}"\n'
        f'cafile = "{where.ca_cert}"\nrequire_certificate = {"true" if mutual else "false"}\n'
    )
    broker = broker_factory("--memory", config=table)
    return broker, tls_port(broker)


def test_mutual_tls_with_a_device_certificate(runtime: Runtime, broker_factory, site: Path) -> None:  # type: ignore[no-untyped-def]
    broker, port = start_tls_broker(broker_factory, site, mutual=True)
    ca, cert, key = device_files(runtime, site)
    cid = f"mtls-{runtime.name}"
    prog = runtime.run("tls_mutual_echo.py", "127.0.0.1", port, cid, ca, cert, key)
    assert prog.got() == [(f"edge/{cid}/echo", 1, 0, "over mutual tls")], prog.output()
    assert re.search(rf"New client connected from 127\.0\.0\.1:\d+ as {cid}\b", broker.log())


def test_device_without_certificate_is_refused(runtime: Runtime, broker_factory, site: Path) -> None:  # type: ignore[no-untyped-def]
    broker, port = start_tls_broker(broker_factory, site, mutual=True)
    ca, _, _ = device_files(runtime, site)
    prog = runtime.start("tls_mutual_echo.py", "127.0.0.1", port, f"nocert-{runtime.name}", ca, "-", "-")
    assert prog.wait(30) != 0
    assert "DONE" not in "\n".join(prog.lines), prog.output()
    broker.wait_for_log(r"TLS handshake with \S+ failed")
    assert "New client connected" not in broker.log()


def test_server_only_tls(runtime: Runtime, broker_factory, site: Path) -> None:  # type: ignore[no-untyped-def]
    broker, port = start_tls_broker(broker_factory, site, mutual=False)
    ca, _, _ = device_files(runtime, site)
    cid = f"tls-{runtime.name}"
    prog = runtime.run("tls_echo.py", "127.0.0.1", port, cid, ca)
    assert prog.got() == [(f"edge/{cid}/echo", 1, 0, "over tls")], prog.output()
