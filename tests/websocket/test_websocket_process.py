"""The broker process with ``[[listener]]`` tables for ws and wss: real clients, bad handshakes.

Certificates come from the broker's own tool (``broker.certs``); paho-mqtt talks over
WebSockets and over TLS WebSockets, mosquitto_pub over plain TCP on the same broker.
"""

from __future__ import annotations

import ssl
import subprocess
import uuid

import pytest

from broker import certs
from brokerprocess import BrokerFactory
from e2e.mqttraw import CONNACK, connect_packet
from e2e.pahoclient import PahoClient

from wsharness import websocket_addresses, websocket_config
from wsraw import CLOSE, WSRawClient, close_payload, frame, request_bytes


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> certs.CertPaths:
    return certs.init(tmp_path_factory.mktemp("certs"), hosts=["localhost"], ips=["127.0.0.1"])


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("version", [4, 5])
def test_ws_and_wss_listeners_with_paho_and_mosquitto_pub(
    broker_factory: BrokerFactory, cert_dir: certs.CertPaths, version: int
) -> None:
    broker = broker_factory(config=websocket_config(cert_dir))
    addresses = websocket_addresses(broker, tls=True)
    topic = uid("process")
    ws = PahoClient(addresses["ws"], uid("ws"), version=version, transport="websockets")
    wss = PahoClient(addresses["wss"], uid("wss"), version=version, transport="websockets")
    # The device trusts our CA and checks the broker's name (127.0.0.1 is an IP SAN).
    wss.client.tls_set_context(ssl.create_default_context(cafile=str(cert_dir.ca_cert)))
    ws.connect()
    wss.connect()
    ws.subscribe(topic, qos=1)
    wss.subscribe(topic, qos=1)
    subprocess.run(
        ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-t", topic, "-m", "over tcp", "-q", "1"],
        check=True, timeout=30,
    )
    wss.client.publish(topic, b"over wss", qos=2).wait_for_publish(5)
    for client in (ws, wss):
        assert sorted(m.payload for m in client.expect_messages(2)) == [b"over tcp", b"over wss"]
        client.client.disconnect()
        client.client.loop_stop()


def test_bad_handshakes_leave_the_listener_serving(broker_factory: BrokerFactory) -> None:
    broker = broker_factory("--memory", config=websocket_config())
    address = websocket_addresses(broker, tls=False)["ws"]
    for request, status in (
        (request_bytes(path="/nope"), 404),
        (request_bytes(headers={"Sec-WebSocket-Protocol": None}), 400),
        (request_bytes(headers={"Sec-WebSocket-Version": "7"}), 426),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(200) + b"\r\n\r\n", 400),  # TLS on a ws port
    ):
        with WSRawClient(address.host, address.port) as client:
            client.upgrade(request, expect_status=status)
            client.read_until_closed()
    broker.wait_for_log(r"websocket handshake from 127\.0\.0\.1:\d+ refused: 404 no MQTT WebSocket endpoint at /nope")
    with WSRawClient(address.host, address.port) as client:
        client.upgrade()
        client.send_binary(connect_packet(uid("after")))
        assert client.expect_packet(CONNACK).reason_code == 0
        client.send(frame(CLOSE, close_payload(1000)))
        assert client.expect_frame(CLOSE).close_code == 1000
    assert broker.stop() == 0


def test_plain_tcp_on_a_wss_port_fails_its_tls_handshake_only(
    broker_factory: BrokerFactory, cert_dir: certs.CertPaths
) -> None:
    broker = broker_factory("--memory", config=websocket_config(cert_dir))
    addresses = websocket_addresses(broker, tls=True)
    with WSRawClient(addresses["wss"].host, addresses["wss"].port) as client:
        client.send(request_bytes())
        client.read_until_closed()
    broker.wait_for_log(r"TLS handshake with 127\.0\.0\.1:\d+ failed")
    wss = PahoClient(addresses["wss"], uid("wss-after"), version=5, transport="websockets")
    wss.client.tls_set_context(ssl.create_default_context(cafile=str(cert_dir.ca_cert)))
    wss.connect()
    wss.client.disconnect()
    wss.client.loop_stop()


def test_broker_stop_tells_websocket_clients_and_exits(broker_factory: BrokerFactory) -> None:
    broker = broker_factory("--memory", config=websocket_config())
    address = websocket_addresses(broker, tls=False)["ws"]
    client = PahoClient(address, uid("stopping"), version=5, transport="websockets")
    client.connect()
    with WSRawClient(address.host, address.port) as raw:
        raw.upgrade()
        raw.send_binary(connect_packet(uid("raw"), version=5))
        raw.expect_packet(CONNACK, version=5)
        assert broker.stop() == 0
        # The raw client sees the DISCONNECT (0x8B server shutting down), then a Close frame.
        disconnect = raw.expect_packet(14, version=5)
        assert disconnect.reason_code == 0x8B
        assert raw.expect_frame(CLOSE).close_code == 1000
    reason, _ = client.wait_disconnected()
    assert reason == 0x8B
    client.client.loop_stop()
