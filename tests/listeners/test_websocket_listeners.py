"""``protocol = "websockets"`` listeners of the real broker process: ws:// and wss:// with paho-mqtt.

The WebSocket protocol itself is tested in tests/websocket; here the listener
settings are: the path, TLS (wss), the allowed origins and the handshake timeout,
and WebSocket clients meeting TCP and TLS clients in one broker.
"""

from __future__ import annotations

import base64
import os
import socket
import time

import pytest
from paho.mqtt.client import WebsocketConnectionError

from brokerprocess import BrokerFactory
from e2e.pahoclient import PahoClient

from .conftest import PKI, endpoints


def ws_tables(pki: PKI, extra_ws: str = "") -> str:
    return (
        '[[listener]]\nport = 0\nprotocol = "websockets"\n' + extra_ws + "\n"
        '[[listener]]\nport = 0\nprotocol = "websockets"\n'
        f'certfile = "{pki.server_cert}"\nkeyfile = "{pki.server_key}"\n'
    )


def close(*clients: PahoClient) -> None:
    for client in clients:
        client.client.disconnect()
        client.client.loop_stop()


@pytest.mark.parametrize("version", [4, 5])
def test_ws_wss_and_tcp_clients_meet(broker_factory: BrokerFactory, pki: PKI, version: int) -> None:
    broker = broker_factory("--memory", config=ws_tables(pki))
    plain, ws, wss = endpoints(broker, 3)
    assert (ws.kind, wss.kind) == ("websockets (ws, path /mqtt)", "websockets over TLS 1.2+ (wss, path /mqtt)")

    browser = PahoClient(ws, client_id=f"ws-{version}", version=version, transport="websockets")
    secure = PahoClient(wss, client_id=f"wss-{version}", version=version, transport="websockets")
    secure.client.tls_set(ca_certs=str(pki.ca))
    device = PahoClient(plain, client_id=f"tcp-{version}", version=version)
    for client in (browser, secure, device):
        client.connect()
        client.subscribe("dash/#", qos=1)
    secure.client.publish("dash/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
    for index, client in enumerate((browser, secure, device)):
        client.client.publish(f"dash/{index}", f"from {index}".encode(), qos=1).wait_for_publish(5)
    expected = [b"from 0", b"from 1", b"from 2", b"kept"]
    for client in (browser, secure, device):
        assert sorted(m.payload for m in client.wait_messages(4)) == expected
    late = PahoClient(wss, client_id=f"late-{version}", version=version, transport="websockets")
    late.client.tls_set(ca_certs=str(pki.ca))
    late.connect()
    late.subscribe("dash/retained", qos=1)
    assert [m.payload for m in late.wait_messages(1)] == [b"kept"]
    close(browser, secure, device, late)


def test_websocket_path_is_configurable(broker_factory: BrokerFactory, pki: PKI) -> None:
    broker = broker_factory("--memory", config=ws_tables(pki, 'websocket_path = "/edge/mqtt"'))
    _, ws, _ = endpoints(broker, 3)
    assert ws.kind == "websockets (ws, path /edge/mqtt)"
    good = PahoClient(ws, client_id="right-path", transport="websockets", ws_path="/edge/mqtt")
    good.connect()
    close(good)
    wrong = PahoClient(ws, client_id="wrong-path", transport="websockets", ws_path="/mqtt")
    with pytest.raises(WebsocketConnectionError, match="not upgraded"):
        wrong.connect()
    wrong.client.loop_stop()
    assert status_of(ws.host, ws.port, upgrade_request("/mqtt", None)) == 404


def upgrade_request(path: str, origin: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: mqtt",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(host: str, port: int, request: bytes) -> int:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(1024)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def test_allowed_origins(broker_factory: BrokerFactory, pki: PKI) -> None:
    broker = broker_factory("--memory", config=ws_tables(pki, 'allowed_origins = ["https://dash.example"]'))
    _, ws, _ = endpoints(broker, 3)
    assert status_of(ws.host, ws.port, upgrade_request("/mqtt", "https://dash.example")) == 101
    assert status_of(ws.host, ws.port, upgrade_request("/mqtt", "https://evil.example")) == 403
    assert status_of(ws.host, ws.port, upgrade_request("/other", "https://dash.example")) == 404


def test_silent_websocket_client_is_closed_after_the_handshake_timeout(broker_factory: BrokerFactory, pki: PKI) -> None:
    broker = broker_factory("--memory", config=ws_tables(pki, "handshake_timeout = 1"))
    _, ws, _ = endpoints(broker, 3)
    with socket.create_connection((ws.host, ws.port), timeout=10) as silent:
        started = time.monotonic()
        received = b""
        while chunk := silent.recv(1024):
            received += chunk
        elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408"), received
    assert 0.8 <= elapsed < 8, elapsed
