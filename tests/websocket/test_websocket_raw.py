"""MQTT over WebSockets at the byte level: the HTTP upgrade and RFC 6455 frames built by hand.

The oracles are RFC 6455 (status codes, close codes, the accept token, frame layout) and
MQTT 5 chapter 6 (binary frames, subprotocol ``mqtt``, packets independent of frames).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from broker.config import Config
from e2e.mqttraw import (
    CONNACK,
    PINGRESP,
    PINGREQ_PACKET,
    PUBACK,
    PUBLISH,
    SUBACK,
    connect_packet,
    disconnect_packet,
    publish_packet,
    subscribe_packet,
)

from wsharness import InProcessBroker
from wsraw import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    ConnectionClosed,
    Frame,
    WSRawClient,
    close_payload,
    frame,
    request_bytes,
)


@pytest.fixture
def broker() -> Iterator[InProcessBroker]:
    server = InProcessBroker().start()
    yield server
    server.stop()


def open_client(broker: InProcessBroker, request: bytes | None = None) -> WSRawClient:
    client = WSRawClient("127.0.0.1", broker.ws.port)
    client.upgrade(request)
    return client


def assert_listener_alive(broker: InProcessBroker) -> None:
    """After whatever a bad client did, a good one still connects."""
    with open_client(broker) as client:
        client.send_binary(connect_packet("alive-check"))
        assert client.expect_packet(CONNACK).reason_code == 0


# ---- the upgrade ----------------------------------------------------------------------


def test_upgrade_answers_101_with_the_mqtt_subprotocol(broker: InProcessBroker) -> None:
    with WSRawClient("127.0.0.1", broker.ws.port) as client:
        response = client.upgrade(request_bytes(headers={"Sec-WebSocket-Protocol": "mqtt"}))
        assert response.headers["sec-websocket-protocol"] == "mqtt"
        assert response.headers["upgrade"].lower() == "websocket"
        client.send_binary(connect_packet("c1"))
        connack = client.expect_packet(CONNACK)
        assert (connack.reason_code, connack.session_present) == (0, False)


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [("mqttv3.1", "mqttv3.1"), ("mqttv3.1, mqtt", "mqtt"), ("chat, mqtt", "mqtt"), ("MQTT, mqtt", "mqtt")],
)
def test_subprotocol_choice(broker: InProcessBroker, offered: str, chosen: str) -> None:
    with WSRawClient("127.0.0.1", broker.ws.port) as client:
        response = client.upgrade(request_bytes(headers={"Sec-WebSocket-Protocol": offered}))
        assert response.headers["sec-websocket-protocol"] == chosen


# (description, request bytes, expected status, text the body must contain, a header that must be present)
BAD_HANDSHAKES = [
    ("wrong path", request_bytes(path="/other"), 404, "/other", None),
    ("path prefix", request_bytes(path="/mqttx"), 404, "it is at /mqtt", None),
    ("no subprotocol", request_bytes(headers={"Sec-WebSocket-Protocol": None}), 400, "subprotocol 'mqtt'", None),
    ("other subprotocol", request_bytes(headers={"Sec-WebSocket-Protocol": "chat"}), 400, "it offered chat", None),
    ("old version", request_bytes(headers={"Sec-WebSocket-Version": "8"}), 426, "Sec-WebSocket-Version",
     "sec-websocket-version"),
    ("no version", request_bytes(headers={"Sec-WebSocket-Version": None}), 400, "Sec-WebSocket-Version", None),
    ("no key", request_bytes(headers={"Sec-WebSocket-Key": None}), 400, "Sec-WebSocket-Key", None),
    ("plain GET", b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", 426, "WebSocket client", "upgrade"),
    ("no Connection: upgrade", request_bytes(headers={"Connection": "keep-alive"}), 426,
     "invalid Connection header", "upgrade"),
    ("POST", request_bytes(method="POST"), 400, "expected GET; got POST", None),
    ("HTTP/1.0", request_bytes().replace(b"HTTP/1.1", b"HTTP/1.0"), 400, "expected HTTP/1.1", None),
    ("bad key", request_bytes(key="c2hvcnQ="), 400, "Sec-WebSocket-Key", None),
    ("no Host", request_bytes(headers={"Host": None}), 400, "Host", None),
    ("not HTTP", b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00\r\n\r\n", 400, "bad HTTP request", None),
    ("huge header", request_bytes(headers={"X-Big": "a" * 20000}), 431, "bad HTTP request", None),
    ("huge head", request_bytes(headers={f"X-Big-{i}": "a" * 5000 for i in range(4)}), 431,
     "request head is over 16384 bytes", None),
]


@pytest.mark.parametrize(("what", "request_data", "status", "text", "header"), BAD_HANDSHAKES,
                         ids=[case[0] for case in BAD_HANDSHAKES])
def test_bad_handshakes_get_clear_http_errors(
    broker: InProcessBroker, caplog: pytest.LogCaptureFixture, what: str, request_data: bytes,
    status: int, text: str, header: str | None,
) -> None:
    caplog.set_level(logging.INFO, logger="broker")
    with WSRawClient("127.0.0.1", broker.ws.port) as client:
        response = client.upgrade(request_data, expect_status=status)
        assert text in response.body.decode(), response
        assert response.headers["content-type"].startswith("text/plain")
        if header is not None:
            assert header in response.headers, response.headers
        client.read_until_closed()  # the server closes after its answer
    assert any("websocket handshake from 127.0.0.1" in r.getMessage() and f"refused: {status}" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert_listener_alive(broker)


def test_request_may_carry_a_query_string(broker: InProcessBroker) -> None:
    with open_client(broker, request_bytes(path="/mqtt?token=abc")) as client:
        client.send_binary(connect_packet("q"))
        assert client.expect_packet(CONNACK).reason_code == 0


def test_configurable_path() -> None:
    server = InProcessBroker(path="/ws/broker").start()
    try:
        with WSRawClient("127.0.0.1", server.ws.port) as client:
            response = client.upgrade(request_bytes(path="/mqtt"), expect_status=404)
            assert "it is at /ws/broker" in response.body.decode()
        with open_client(server, request_bytes(path="/ws/broker")) as client:
            client.send_binary(connect_packet("p"))
            assert client.expect_packet(CONNACK).reason_code == 0
    finally:
        server.stop()


def test_origin_check() -> None:
    server = InProcessBroker(allowed_origins=["https://dash.example.com", "http://localhost:8080/"]).start()
    try:
        for origin in ("https://dash.example.com", "HTTPS://Dash.Example.com", "http://localhost:8080"):
            with open_client(server, request_bytes(headers={"Origin": origin})):
                pass
        with WSRawClient("127.0.0.1", server.ws.port) as client:
            response = client.upgrade(request_bytes(headers={"Origin": "https://evil.example"}), expect_status=403)
            assert "origin https://evil.example is not allowed" in response.body.decode()
        # Programs that are not browsers send no Origin: the check is about pages in browsers.
        with open_client(server, request_bytes(headers={"Origin": None})) as client:
            client.send_binary(connect_packet("no-origin"))
            assert client.expect_packet(CONNACK).reason_code == 0
    finally:
        server.stop()


def test_without_origin_list_any_origin_is_accepted(broker: InProcessBroker) -> None:
    with open_client(broker, request_bytes(headers={"Origin": "https://anywhere.example"})) as client:
        client.send_binary(connect_packet("any-origin"))
        assert client.expect_packet(CONNACK).reason_code == 0


def test_handshake_timeout_closes_a_silent_client() -> None:
    server = InProcessBroker(handshake_timeout=0.5).start()
    try:
        with WSRawClient("127.0.0.1", server.ws.port) as silent, \
                WSRawClient("127.0.0.1", server.ws.port) as slow:
            slow.send(request_bytes()[:20])  # half a request line, then nothing
            for client in (silent, slow):
                answer = client.read_until_closed(timeout=10)
                assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert server.connection_count() == 0
        assert_listener_alive(server)
    finally:
        server.stop()


def test_frames_sent_right_behind_the_request_are_kept(broker: InProcessBroker) -> None:
    with WSRawClient("127.0.0.1", broker.ws.port) as client:
        client.upgrade(request_bytes() + frame(BINARY, connect_packet("eager")))
        assert client.expect_packet(CONNACK).reason_code == 0


# ---- frames ---------------------------------------------------------------------------


def test_packet_split_across_frames_and_messages(broker: InProcessBroker) -> None:
    connect = connect_packet("split", keepalive=30)
    with open_client(broker) as client:
        # One message in three frames (binary + continuations), sent byte-wise apart.
        client.send(frame(BINARY, connect[:3], fin=False))
        client.send(frame(CONTINUATION, connect[3:7], fin=False))
        client.send(frame(CONTINUATION, connect[7:], fin=True))
        assert client.expect_packet(CONNACK).reason_code == 0
        # A packet split across two separate messages (MQTT is a stream: frames mean nothing).
        subscribe = subscribe_packet(1, [("split/#", 1)])
        client.send(frame(BINARY, subscribe[:5]))
        client.send(frame(BINARY, subscribe[5:]))
        assert client.expect_packet(SUBACK).reason_codes == [1]
        # A frame whose header and payload arrive in pieces.
        publish = frame(BINARY, publish_packet("split/a", b"x" * 300, qos=1, packet_id=9))
        for start in range(0, len(publish), 7):
            client.send(publish[start:start + 7])
        # The PUBACK waits for the commit, the delivery to ourselves may come first.
        got = {packet.type: packet for packet in (client.recv_packet(), client.recv_packet()) if packet}
        assert got[PUBACK].packet_id == 9
        assert (got[PUBLISH].topic, got[PUBLISH].payload) == ("split/a", b"x" * 300)


def test_several_packets_in_one_frame(broker: InProcessBroker) -> None:
    with open_client(broker) as client:
        burst = (
            connect_packet("merged")
            + subscribe_packet(1, [("merged/t", 0)])
            + publish_packet("merged/t", b"one")
            + publish_packet("merged/t", b"two")
            + PINGREQ_PACKET
        )
        client.send_binary(burst)
        assert client.expect_packet(CONNACK).reason_code == 0
        assert client.expect_packet(SUBACK).reason_codes == [0]
        got = [client.expect_packet(PUBLISH).payload for _ in range(2)]
        assert got == [b"one", b"two"]
        client.expect_packet(PINGRESP)


def test_ping_gets_pong_with_the_same_payload(broker: InProcessBroker) -> None:
    with open_client(broker) as client:
        client.send(frame(PING, b"are you there"))
        pong = client.expect_frame(PONG)
        assert pong.payload == b"are you there"
        # A ping in the middle of a fragmented message is allowed (RFC 6455 5.4).
        connect = connect_packet("pinged")
        client.send(frame(BINARY, connect[:4], fin=False) + frame(PING, b"mid") + frame(CONTINUATION, connect[4:]))
        assert client.expect_frame(PONG).payload == b"mid"
        assert client.expect_packet(CONNACK).reason_code == 0


def test_server_frames_are_binary_and_unmasked(broker: InProcessBroker) -> None:
    with open_client(broker) as client:
        client.send_binary(connect_packet("binary"))
        got = client.expect_frame(BINARY)  # wsraw asserts the mask bit is clear
        assert got.fin and got.payload[:1] == b"\x20"  # a whole CONNACK


def test_client_close_is_answered_and_the_will_is_published(broker: InProcessBroker) -> None:
    with open_client(broker) as watcher:
        watcher.send_binary(connect_packet("watcher") + subscribe_packet(1, [("will/#", 0)]))
        watcher.expect_packet(CONNACK)
        watcher.expect_packet(SUBACK)
        with open_client(broker) as client:
            will = {"topic": "will/gone", "payload": b"bye", "qos": 0}
            client.send_binary(connect_packet("closer", will=will))
            client.expect_packet(CONNACK)
            client.send(frame(CLOSE, close_payload(1001, "going away")))
            answer = client.expect_frame(CLOSE)
            assert answer.close_code == 1001  # the client's code echoed (RFC 6455 5.5.1)
            assert client.read_until_closed() == b""
        # Closing the WebSocket without DISCONNECT is a lost connection: the will goes out.
        will_message = watcher.expect_packet(PUBLISH)
        assert (will_message.topic, will_message.payload) == ("will/gone", b"bye")


def test_mqtt_disconnect_ends_with_a_normal_close(broker: InProcessBroker) -> None:
    with open_client(broker) as client:
        client.send_binary(connect_packet("leaver", will={"topic": "w", "payload": b"no"}))
        client.expect_packet(CONNACK)
        client.send_binary(disconnect_packet())
        close = client.expect_frame(CLOSE)
        assert close.close_code == 1000
        client.send(frame(CLOSE, close_payload(1000)))
        assert client.read_until_closed() == b""  # the server closes TCP after the handshake


def test_refusing_connack_then_close(broker: InProcessBroker) -> None:
    with open_client(broker) as client:
        client.send_binary(connect_packet("bad", version=3))  # MQTT 3.1 "MQTT" name mismatch / level 3
        packets = []
        try:
            while (got := client.recv_frame()) is not None and got.opcode != CLOSE:
                packets.append(got)
        except ConnectionClosed:
            got = None
        assert packets and packets[0].payload[:1] == b"\x20"  # CONNACK first
        assert got is not None and got.close_code == 1000


@pytest.mark.parametrize(
    ("what", "data", "code"),
    [
        ("text frame", frame(TEXT, b"\x10\x00"), 1003),
        ("unmasked frame", frame(BINARY, b"\x10\x00", mask=None), 1002),
        ("unknown opcode", frame(0x3, b"x"), 1002),
        ("fragmented ping", frame(PING, b"x", fin=False), 1002),
        ("continuation without start", frame(CONTINUATION, b"x"), 1002),
        ("reserved bit", bytes([0xC2]) + frame(BINARY, b"x")[1:], 1002),
    ],
)
def test_frame_errors_close_with_the_right_code(broker: InProcessBroker, what: str, data: bytes, code: int) -> None:
    with open_client(broker) as client:
        client.send(data)
        close = client.expect_frame(CLOSE)
        assert close.close_code == code, what
        client.send(frame(CLOSE, close_payload(code)))
        client.read_until_closed()
    assert_listener_alive(broker)


def close_frame(client: WSRawClient) -> Frame:
    """Skip the data frames the broker still sends; the Close frame."""
    while True:
        got = client.recv_frame()
        assert got is not None, "no Close frame"
        if got.opcode == CLOSE:
            return got


def test_message_larger_than_max_packet_size_is_refused_with_1009() -> None:
    server = InProcessBroker(Config(backend="memory", max_packet_size=1000)).start()
    try:
        with open_client(server) as client:
            client.send_binary(connect_packet("big"))
            client.expect_packet(CONNACK)
            # Within the limit: fine (the frame holds 1000 bytes of MQTT).
            exactly_1000 = publish_packet("t", b"p" * 994)
            assert len(exactly_1000) == 1000
            client.send_binary(exactly_1000)
            client.send_binary(PINGREQ_PACKET)
            client.expect_packet(PINGRESP)
            # One byte more, in a single frame header that announces it: closed with 1009.
            client.send(frame(BINARY, b"\x30" + b"\x00" * 1000))
            close = client.expect_frame(CLOSE)
            assert close.close_code == 1009 and b"1000 bytes" in close.payload[2:]
        with open_client(server) as client:
            # The same limit across a fragmented message of valid small packets: no frame and no
            # packet is large, the message is.
            connect = connect_packet("fragmented")
            pings = PINGREQ_PACKET * ((600 - len(connect)) // 2)
            client.send(frame(BINARY, connect + pings, fin=False))
            client.send(frame(CONTINUATION, PINGREQ_PACKET * 300, fin=False))
            assert close_frame(client).close_code == 1009
        with open_client(server) as client:
            # A frame header announcing 2**62 bytes: refused once the limit is passed.
            client.send_binary(connect_packet("endless"))
            client.expect_packet(CONNACK)
            client.send(bytes([0x82, 0xFF]) + (2**62).to_bytes(8, "big") + b"\x00\x00\x00\x00"
                        + PINGREQ_PACKET * 550)
            assert close_frame(client).close_code == 1009
        assert_listener_alive(server)
    finally:
        server.stop()
