"""Issue 15: max_connections, max_connections_per_address and max_connect_rate.

A client over a limit is answered at its CONNECT (MQTT 5: CONNACK 0x9F, 3.1.1:
CONNACK 3) and closed. Attackers connect from 127.0.0.2/127.0.0.3 so that the
canary (127.0.0.1) is a different address.
"""

from __future__ import annotations

import re

from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from bench.robustness import Client, connect
from broker.config import Config
from broker.server.admission import Admission


def admission(**limits: int) -> Admission:
    config = Config()
    for key, value in {"max_connections": 0, **limits}.items():
        setattr(config, key, value)
    return Admission(config)


def test_total_and_per_address_limits() -> None:
    gate = admission(max_connections=3, max_connections_per_address=2)
    assert gate.admit("10.0.0.1") is None and gate.admit("10.0.0.1") is None
    assert "max_connections_per_address" in (gate.admit("10.0.0.1") or "")
    assert gate.admit(None) is None  # a Unix socket: no address, counts in the total only
    assert "max_connections" in (gate.admit("10.0.0.2") or "")
    gate.release("10.0.0.1")
    assert gate.admit("10.0.0.2") is None
    for address in ("10.0.0.1", "10.0.0.2", None):
        gate.release(address)
    assert gate.total == 0 and len(gate) == 0


def test_connect_rate_is_a_token_bucket_and_its_table_is_pruned() -> None:
    gate = admission(max_connect_rate=2)
    assert [gate.admit("h", now=0.0) for _ in range(3)][:2] == [None, None]
    assert "max_connect_rate" in (gate.admit("h", now=0.1) or "")
    assert gate.admit("h", now=0.6) is None  # one token back after half a second
    for _ in range(3):
        gate.release("h")
    gate.prune(now=100.0)
    assert len(gate) == 0


def test_refusal_reports_are_rate_limited() -> None:
    gate = admission()
    assert gate.report("x", now=0.0) == "refusing a connection: x"
    assert gate.report("x", now=0.5) is None
    assert gate.report("x", now=1.2) == "refusing a connection: x (1 more refused since the last report)"


def connack(port: int, version: int, source: str, client_id: str) -> tuple[Client, bytes]:
    client = Client(port, timeout=10, source=source)
    client.send(connect(client_id, version))
    return client, client.expect(2)


def test_max_connections_refuses_with_0x9f(broker_factory, canary_factory) -> None:
    broker = broker_factory(config="[limits]\nmax_connections = 5\n")
    canary = canary_factory(broker.port)  # two connections
    held = [connack(broker.port, 4, "127.0.0.2", f"held{i}") for i in range(3)]
    assert [body for _, body in held] == [b"\x00\x00"] * 3
    v5, body5 = connack(broker.port, 5, "127.0.0.2", "over5")
    assert body5[1] == 0x9F
    v3, body3 = connack(broker.port, 4, "127.0.0.2", "over3")
    assert body3 == b"\x00\x03"
    for client in (v5, v3):
        try:
            assert client.sock.recv(10) == b""
        except ConnectionResetError:
            pass
        client.close()
    held[0][0].close()
    broker.wait_for_log("Client held0 disconnected")
    again, body = connack(broker.port, 4, "127.0.0.2", "again")
    assert body == b"\x00\x00"
    broker.wait_for_log("refusing a connection: too many connections")
    canary.stop().check()
    for client, _ in held[1:] + [(again, b"")]:
        client.close()


def test_per_address_limit_and_connect_rate(broker_factory, canary_factory) -> None:
    broker = broker_factory(config="[limits]\nmax_connections_per_address = 2\nmax_connect_rate = 5\n")
    canary = canary_factory(broker.port)
    first = [connack(broker.port, 5, "127.0.0.2", f"a{i}") for i in range(3)]
    assert [body[1] for _, body in first] == [0, 0, 0x9F]
    answers = []
    for i in range(20):
        client, body = connack(broker.port, 5, "127.0.0.3", f"r{i}")
        answers.append(body[1])
        client.close()
    assert answers[:5] == [0] * 5 and answers.count(0x9F) >= 10, answers
    canary.stop().check()
    for client, _ in first:
        client.close()


def ws_connack(address: str, client_id: str) -> bytes:
    """CONNECT (MQTT 5) over a WebSocket listener; the CONNACK's bytes."""
    with ws_connect(f"ws://{address}/mqtt", subprotocols=[Subprotocol("mqtt")], open_timeout=10) as ws:
        ws.send(connect(client_id, 5))
        answer = ws.recv(timeout=10)
        assert isinstance(answer, bytes)
        return answer


def test_limits_count_websocket_clients_too(broker_factory) -> None:
    """One Admission for every listener: a WebSocket client over max_connections gets 0x9F."""
    broker = broker_factory(
        config='[limits]\nmax_connections = 1\n\n[[listener]]\nport = 0\n\n[[listener]]\nport = 0\nprotocol = "websockets"\n'
    )
    found = re.search(r"websockets .*listening on (127\.0\.0\.1:\d+)", broker.wait_for_log("websockets .*listening on").string)
    assert found is not None
    address = found.group(1)
    held, body = connack(broker.port, 4, "127.0.0.1", "held")
    assert body == b"\x00\x00"
    over = ws_connack(address, "ws-over")
    assert over[0] == 0x20 and over[3] == 0x9F, over  # CONNACK (length < 128), 0x9F Connection rate exceeded
    held.close()
    broker.wait_for_log("Client held disconnected")
    accepted = ws_connack(address, "ws-in")
    assert accepted[0] == 0x20 and accepted[3] == 0x00, accepted  # the released slot is taken
    broker.wait_for_log("Client ws-in disconnected")
    again, body = connack(broker.port, 4, "127.0.0.1", "tcp-again")  # and given back by the WebSocket
    assert body == b"\x00\x00"
    again.close()
