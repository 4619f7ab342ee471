"""paho-mqtt with ``transport="websockets"`` against the WebSocket listener (MQTT 3.1.1 and 5).

Each test crosses transports where it can: a WebSocket client and a plain TCP client of
the same engine exchange messages, so the WebSocket path is checked against the TCP one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from e2e.pahoclient import PahoClient

from wsharness import InProcessBroker

VERSIONS = [4, 5]


@pytest.fixture(scope="module")
def broker() -> Iterator[InProcessBroker]:
    server = InProcessBroker().start()
    yield server
    server.stop()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ws_client(broker: InProcessBroker, client_id: str, version: int, clean: bool = True) -> PahoClient:
    return PahoClient(broker.ws, client_id, version=version, clean=clean, transport="websockets")


def tcp_client(broker: InProcessBroker, client_id: str, version: int) -> PahoClient:
    return PahoClient(broker.tcp, client_id, version=version)


def stop(*clients: PahoClient) -> None:
    for client in clients:
        client.client.disconnect()
        client.client.loop_stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_publish_and_subscribe_every_qos(broker: InProcessBroker, version: int) -> None:
    topic = uid("ws/qos")
    sub = ws_client(broker, uid("ws-sub"), version)
    pub = ws_client(broker, uid("ws-pub"), version)
    sub.connect()
    pub.connect()
    assert sub.subscribe(f"{topic}/#", qos=2) == [2]
    for qos in (0, 1, 2):
        info = pub.client.publish(f"{topic}/{qos}", f"payload {qos}".encode(), qos=qos)
        info.wait_for_publish(5)
    got = sub.expect_messages(3)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        (f"{topic}/{qos}", f"payload {qos}".encode(), qos) for qos in (0, 1, 2)
    ]
    stop(sub, pub)


@pytest.mark.parametrize("version", VERSIONS)
def test_websocket_and_tcp_clients_talk(broker: InProcessBroker, version: int) -> None:
    topic = uid("cross")
    ws_sub = ws_client(broker, uid("ws"), version)
    tcp_sub = tcp_client(broker, uid("tcp"), version)
    ws_sub.connect()
    tcp_sub.connect()
    ws_sub.subscribe(topic, qos=1)
    tcp_sub.subscribe(topic, qos=1)
    ws_sub.client.publish(topic, b"from ws", qos=1).wait_for_publish(5)
    tcp_sub.client.publish(topic, b"from tcp", qos=1).wait_for_publish(5)
    for client in (ws_sub, tcp_sub):
        assert sorted(m.payload for m in client.expect_messages(2)) == [b"from tcp", b"from ws"]
    stop(ws_sub, tcp_sub)


@pytest.mark.parametrize("version", VERSIONS)
def test_large_message_over_websockets(broker: InProcessBroker, version: int) -> None:
    topic = uid("large")
    sub = ws_client(broker, uid("sub"), version)
    sub.connect()
    sub.subscribe(topic, qos=1)
    payload = bytes(range(256)) * 1024  # 256 KiB: many TCP segments, 64-bit frame length
    tcp = tcp_client(broker, uid("pub"), version)
    tcp.connect()
    tcp.client.publish(topic, payload, qos=1).wait_for_publish(10)
    [message] = sub.expect_messages(1, timeout=10)
    assert message.payload == payload
    sub.client.publish(topic + "/back", payload, qos=1).wait_for_publish(10)
    stop(sub, tcp)


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_and_persistent_session_over_websockets(broker: InProcessBroker, version: int) -> None:
    topic = uid("persist")
    client_id = uid("persistent")
    tcp = tcp_client(broker, uid("pub"), version)
    tcp.connect()
    tcp.client.publish(topic + "/retained", b"kept", qos=1, retain=True).wait_for_publish(5)

    first = ws_client(broker, client_id, version, clean=False)
    first.connect(clean_start=False, **({"SessionExpiryInterval": 300} if version == 5 else {}))
    first.subscribe(f"{topic}/#", qos=1)
    [retained] = first.expect_messages(1)
    assert (retained.payload, retained.retain) == (b"kept", True)
    stop(first)
    first.wait_disconnected()

    tcp.client.publish(topic + "/queued", b"while away", qos=1).wait_for_publish(5)
    again = ws_client(broker, client_id, version, clean=False)
    result = again.connect(clean_start=False, **({"SessionExpiryInterval": 300} if version == 5 else {}))
    assert result.session_present
    [queued] = again.expect_messages(1)
    assert (queued.topic, queued.payload) == (f"{topic}/queued", b"while away")
    stop(again, tcp)


def test_will_of_a_websocket_client_that_vanishes(broker: InProcessBroker) -> None:
    topic = uid("will")
    watcher = tcp_client(broker, uid("watch"), 5)
    watcher.connect()
    watcher.subscribe(topic, qos=1)
    doomed = ws_client(broker, uid("doomed"), 5)
    doomed.connect(will=(topic, b"gone", 1, False))
    sock = doomed.client.socket()
    assert sock is not None
    sock.close()  # no DISCONNECT, no Close frame: a lost connection
    [will] = watcher.expect_messages(1)
    assert will.payload == b"gone"
    doomed.client.loop_stop()
    stop(watcher)


def test_keepalive_pings_over_websockets(broker: InProcessBroker) -> None:
    client = ws_client(broker, uid("pinger"), 4)
    client.connect(keepalive=1)
    topic = uid("alive")
    client.subscribe(topic)
    # Several keepalive periods: paho pings, the broker answers, the connection stays.
    client.expect_nothing(quiet=2.5)
    assert not client.disconnects
    client.client.publish(topic, b"still here").wait_for_publish(5)
    assert client.expect_messages(1)[0].payload == b"still here"
    stop(client)
