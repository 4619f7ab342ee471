"""config/listeners.toml, as a newcomer would use it: certificates from the CLI, then every client kind.

The example's paths and ports are moved to a temporary directory and to ports the
OS chooses; everything else (the five listeners, their TLS settings) is the file as
shipped. Each kind of client connects to its listener and they all exchange messages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from brokerprocess import REPO_ROOT, BrokerFactory, subprocess_env
from e2e.pahoclient import PahoClient

from .conftest import endpoints
from .test_tls import finish, wait_for_subscriber

EXAMPLE = REPO_ROOT / "config" / "listeners.toml"


def certs_cli(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broker", "certs", *args],
        env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_example_gateway_serves_every_kind_of_client(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    certs_dir = tmp_path / "certs"
    certs_cli("init", "--dir", str(certs_dir), "--host", "localhost", "--ip", "127.0.0.1")
    certs_cli("client", "sensor-01", "--dir", str(certs_dir))
    socket_path = tmp_path / "mqtt.sock"
    text = EXAMPLE.read_text()
    for port in ("1883", "8883", "8083", "8084"):
        text = text.replace(f"port = {port}\n", "port = 0\n")
    text = (
        text.replace("/etc/edgemq/certs", str(certs_dir))
        .replace('"/run/edgemq/mqtt.sock"', f'"{socket_path}"')
        .replace('"/var/lib/edgemq"', f'"{tmp_path / "data"}"')
        .replace('bind = "0.0.0.0"', 'bind = "127.0.0.1"')
    )
    broker = broker_factory(config=text)
    plain, mtls, ws, wss, unix = endpoints(broker, 5)
    assert mtls.kind == "mqtt over TLS 1.2+ (client certificate required, certificate CN as username)"
    assert (ws.kind, wss.kind) == ("websockets (ws, path /mqtt)", "websockets over TLS 1.2+ (wss, path /mqtt)")
    assert unix.path == str(socket_path)

    device = [
        "--cafile", str(certs_dir / "ca.crt"),
        "--cert", str(certs_dir / "clients" / "sensor-01.crt"),
        "--key", str(certs_dir / "clients" / "sensor-01.key"),
    ]
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", mtls.host, "-p", str(mtls.port), *device, "-i", "sensor-01",
         "-t", "site/#", "-C", "3", "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for_subscriber(broker, "sensor-01")
    dashboard = PahoClient(wss, client_id="dashboard", transport="websockets")
    dashboard.client.tls_set(ca_certs=str(certs_dir / "ca.crt"))
    dashboard.connect()
    local_dash = PahoClient(ws, client_id="local-dashboard", transport="websockets")
    local_dash.connect()
    for client in (dashboard, local_dash):
        client.subscribe("site/#")

    assert finish(subprocess.Popen(
        ["mosquitto_pub", "--unix", unix.path, "-t", "site/unix", "-m", "from a local program"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ))[0] == 0
    dashboard.client.publish("site/wss", b"from the browser").wait_for_publish(5)
    assert finish(subprocess.Popen(
        ["mosquitto_pub", "-h", plain.host, "-p", str(plain.port), "-t", "site/tcp", "-m", "from loopback"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ))[0] == 0

    code, out, err = finish(sub)
    assert code == 0, err
    expected = ["site/tcp from loopback", "site/unix from a local program", "site/wss from the browser"]
    assert sorted(out.splitlines()) == expected
    for client in (dashboard, local_dash):
        got = sorted(f"{m.topic} {m.payload.decode()}" for m in client.wait_messages(3))
        assert got == expected
        client.client.disconnect()
        client.client.loop_stop()
    assert broker.stop() == 0
