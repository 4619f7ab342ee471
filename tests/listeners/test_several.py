"""Several listeners at once, the Unix socket listener, and listeners that cannot start.

Clients on different listeners share one broker: a message published on any of them
reaches subscribers on all of them. A listener that cannot start stops the broker
with a message that names the listener and the file or address at fault.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from brokerprocess import BrokerFactory, subprocess_env
from e2e.pahoclient import PahoClient

from .conftest import PKI, endpoint, endpoints, write_expired_certificate
from .test_tls import finish, tls_args, tls_paho, wait_for_subscriber


def unix_tool(tool: str, path: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([tool, "--unix", path, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def short_socket_path(tmp_path: Path, name: str = "mqtt.sock") -> str:
    path = str(tmp_path / name)
    assert len(path) < 100, f"{path} is too long for a Unix socket"
    return path


# ---- Unix socket -----------------------------------------------------------------------------


def test_unix_socket_listener_with_mosquitto_clients(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    path = short_socket_path(tmp_path)
    broker = broker_factory("--memory", config=f'[[listener]]\npath = "{path}"\n')
    unix = endpoint(broker, "mqtt (mode 0660)", 2)
    assert unix.path == path
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660

    sub = unix_tool("mosquitto_sub", path, "-i", "local-sub", "-t", "local/#", "-C", "1", "-v")
    wait_for_subscriber(broker, "local-sub")
    assert finish(unix_tool("mosquitto_pub", path, "-t", "local/x", "-m", "via unix", "-q", "1"))[0] == 0
    assert finish(sub)[1] == "local/x via unix\n"
    assert "New client connected from unix:" in broker.log()

    assert broker.stop() == 0
    assert not os.path.exists(path), "the socket file was left behind"


def test_unix_socket_mode_and_a_stale_socket_file(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    path = short_socket_path(tmp_path, "stale.sock")
    stale = socket.socket(socket.AF_UNIX)  # a socket file left by a broker that was killed
    stale.bind(path)
    stale.close()
    broker = broker_factory("--memory", config=f'[[listener]]\npath = "{path}"\nmode = "0600"\n')
    endpoint(broker, "mqtt (mode 0600)", 2)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)  # the broker listens on it, not the stale file


# ---- several at once -------------------------------------------------------------------------


def test_several_listeners_deliver_to_each_other(broker_factory: BrokerFactory, pki: PKI, tmp_path: Path) -> None:
    path = short_socket_path(tmp_path, "several.sock")
    config = (
        "[[listener]]\nport = 0\n"  # the first plain listener (--port 0 from the fixture)
        "[[listener]]\nport = 0\n"  # a second plain one
        + pki.tls_table(mutual=True)
        + pki.tls_table(mutual=False)
        + f'[[listener]]\npath = "{path}"\n'
    )
    broker = broker_factory("--memory", config=config)
    found = endpoints(broker, 5)
    kinds = [e.kind for e in found]
    assert kinds == [
        "mqtt", "mqtt",
        "mqtt over TLS 1.2+ (client certificate required)", "mqtt over TLS 1.2+",
        "mqtt (mode 0660)",
    ], kinds
    assert len({e.port for e in found[:4]}) == 4
    # The fixture's first "listening on HOST:PORT" line is the first plain listener.
    assert (broker.host, broker.port) == (found[0].host, found[0].port)

    subscribers = [PahoClient(found[0], client_id="sub-plain-1"), PahoClient(found[1], client_id="sub-plain-2")]
    subscribers.append(tls_paho(pki, found[2], "sub-mtls"))
    subscribers.append(tls_paho(pki, found[3], "sub-tls", certfile=None, keyfile=None))
    for client in subscribers:
        client.connect()
        client.subscribe("all/#", qos=1)
    unix_sub = unix_tool("mosquitto_sub", path, "-i", "sub-unix", "-t", "all/#", "-C", "5", "-v", "-q", "1")
    wait_for_subscriber(broker, "sub-unix")

    for index, publisher in enumerate(found[:4]):
        args = tls_args(pki, with_certificate=index == 2) if "TLS" in publisher.kind else []
        pub = subprocess.Popen(
            ["mosquitto_pub", "-h", publisher.host, "-p", str(publisher.port), *args,
             "-t", f"all/{index}", "-m", f"from {publisher.kind}", "-q", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert finish(pub)[0] == 0
    assert finish(unix_tool("mosquitto_pub", path, "-t", "all/unix", "-m", "from unix", "-q", "1"))[0] == 0

    expected = sorted([f"from {e.kind}" for e in found[:4]] + ["from unix"])
    for client in subscribers:
        assert sorted(m.payload.decode() for m in client.wait_messages(5)) == expected
        client.client.disconnect()
        client.client.loop_stop()
    code, out, _ = finish(unix_sub)
    assert code == 0
    assert sorted(line.split(" ", 1)[1] for line in out.splitlines()) == expected


def test_legacy_listener_section_still_works(broker_factory: BrokerFactory) -> None:
    broker = broker_factory("--memory", config='[listener]\nbind = "127.0.0.1"\nport = 1\n')
    # --port 0 (the fixture) overrides the file; one plain listener, logged as before.
    assert endpoints(broker, 1)[0].kind == "mqtt"
    client = PahoClient(broker, client_id="legacy")
    client.connect()
    client.client.disconnect()
    client.client.loop_stop()


# ---- listeners that cannot start ---------------------------------------------------------------


def run_broker(config: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Start ``python -m broker`` with ``config``; it is expected to exit by itself."""
    path = tmp_path / "broker.toml"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "broker", "-c", str(path), "--memory", *args],
        cwd=tmp_path, env=subprocess_env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=30,
    )


def tls_listener(cert: Path | str, key: Path | str, ca: Path | str | None = None, port: int = 0) -> str:
    lines = ["[[listener]]", f"port = {port}", f'certfile = "{cert}"', f'keyfile = "{key}"']
    if ca is not None:
        lines.append(f'cafile = "{ca}"')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing key", "keyfile {dir}/missing.key: no such file"),
        ("key is a directory", "keyfile {dir}: cannot read the private key"),
        ("wrong key", "keyfile {pki}/clients/device-1.key is not the private key of certfile {pki}/server.crt"),
        ("not a certificate", "certfile {pki}/server.key: this is a private key, not a certificate"),
        ("expired", "certfile {dir}/expired.crt expired on"),
        ("missing ca", "cafile {dir}/nope.pem: no such file"),
        ("encrypted key", "keyfile {dir}/encrypted.key: the key is encrypted"),
    ],
)
def test_bad_tls_files_stop_start_up_naming_listener_and_file(
    pki: PKI, tmp_path: Path, case: str, fragment: str
) -> None:
    from cryptography.hazmat.primitives import serialization

    from broker import certs

    cert, key, ca = pki.server_cert, pki.server_key, pki.ca
    if case == "missing key":
        key = tmp_path / "missing.key"
    elif case == "key is a directory":
        key = tmp_path
    elif case == "wrong key":
        key = pki.client_key
    elif case == "not a certificate":
        cert = pki.server_key
    elif case == "expired":
        cert = tmp_path / "expired.crt"
        write_expired_certificate(pki, cert)
    elif case == "missing ca":
        ca = tmp_path / "nope.pem"
    elif case == "encrypted key":
        key = tmp_path / "encrypted.key"
        key.write_bytes(certs.load_key(pki.server_key).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ))
    result = run_broker("[[listener]]\nport = 0\n" + tls_listener(cert, key, ca), tmp_path)
    assert result.returncode == 1, result.stderr
    expected = fragment.format(dir=tmp_path, pki=pki.dir)
    assert "error: listener mqtt 127.0.0.1:0: " + expected in result.stderr, result.stderr
    assert "listening on" not in result.stderr  # nothing was opened, not even the plain listener


def test_port_taken_stops_start_up_naming_the_listener(pki: PKI, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = "[[listener]]\nport = 0\n" + tls_listener(pki.server_cert, pki.server_key, port=port)
        result = run_broker(config, tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"error: listener mqtt 127.0.0.1:{port}: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "listening on" not in result.stderr


def test_unix_socket_in_a_missing_directory_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "mqtt.sock"
    result = run_broker(f'[[listener]]\npath = "{path}"\n', tmp_path)
    assert result.returncode == 1
    assert f"error: listener mqtt unix:{path}: cannot listen on unix:{path}: No such file or directory" in result.stderr


def test_certificate_expiring_soon_is_warned_about(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    from .conftest import make_pki

    soon = make_pki(tmp_path / "soon", server_days=12, ca_days=25)
    broker = broker_factory("--memory", config=soon.tls_table(mutual=True))
    broker.wait_for_log(
        rf"warning: listener mqtt 127\.0\.0\.1:\d+: certificate {soon.server_cert} expires in 1[12] days"
    )
    broker.wait_for_log(
        rf"warning: listener mqtt 127\.0\.0\.1:\d+: CA certificate in cafile {soon.ca} expires in 2[45] days"
        r" \(.*\); renew it \(python -m broker certs renew ca\)"
    )
    assert broker.running


def test_a_listener_in_the_config_is_checked_before_any_socket_opens(tmp_path: Path) -> None:
    """The TLS listener is the second: its bad file must stop the first one from being opened at all."""
    result = run_broker(
        '[[listener]]\nport = 0\n[[listener]]\nport = 0\ncertfile = "/nonexistent.crt"\nkeyfile = "/nonexistent.key"\n',
        tmp_path,
    )
    assert result.returncode == 1
    assert "error: listener mqtt 127.0.0.1:0: certfile /nonexistent.crt: no such file" in result.stderr
    assert "listening on" not in result.stderr
