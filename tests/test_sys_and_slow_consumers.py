"""$SYS/broker/... statistics, and what a client that stops reading costs, over real sockets with paho."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt


def _collect(port: int, topic_filter: str, client_id: str) -> tuple[mqtt.Client, dict[str, tuple[bytes, bool]]]:
    got: dict[str, tuple[bytes, bool]] = {}
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, (m.payload, m.retain))
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe(topic_filter, 0)
    client.loop_start()
    assert subscribed.wait(5)
    return client, got


def _wait_for(got: dict, topic: str, expected: bytes, deadline: float) -> None:
    while time.monotonic() < deadline:
        value = got.get(topic)
        if value is not None and value[0] == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"{topic}: expected {expected!r}, have {got.get(topic)!r}")


def _wait_present(got: dict, topic: str, deadline: float) -> None:
    while topic not in got:
        assert time.monotonic() < deadline, f"nothing on {topic}"
        time.sleep(0.02)


def test_sys_topics_report_clients_and_messages(broker_factory) -> None:
    broker = broker_factory(config="[mqtt]\nsys_interval = 1\n")
    watcher, got = _collect(broker.port, "$SYS/#", "watcher")
    try:
        _wait_for(got, "$SYS/broker/clients/connected", b"1", time.monotonic() + 5)
        assert got["$SYS/broker/version"][0].startswith(b"edgemq version ")
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        for i in range(3):
            publisher.publish("plain/topic", b"x", qos=1).wait_for_publish(5)
        _wait_for(got, "$SYS/broker/clients/connected", b"2", time.monotonic() + 5)
        _wait_for(got, "$SYS/broker/publish/messages/received", b"3", time.monotonic() + 5)
        publisher.loop_stop()
        publisher.disconnect()
        _wait_for(got, "$SYS/broker/clients/connected", b"1", time.monotonic() + 5)
    finally:
        watcher.loop_stop()
        watcher.disconnect()


def test_sys_values_are_retained_and_clients_cannot_publish_there(broker_factory) -> None:
    broker = broker_factory(config="[mqtt]\nsys_interval = 1\n")
    first, seen = _collect(broker.port, "$SYS/broker/version", "first")
    _wait_present(seen, "$SYS/broker/version", time.monotonic() + 5)  # published (retained)
    first.loop_stop()
    first.disconnect()
    intruder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="intruder")
    intruder.connect("127.0.0.1", broker.port)
    intruder.loop_start()
    intruder.publish("$SYS/broker/version", b"fake", qos=1, retain=True).wait_for_publish(5)
    intruder.loop_stop()
    intruder.disconnect()
    late, got = _collect(broker.port, "$SYS/broker/version", "late")
    _wait_present(got, "$SYS/broker/version", time.monotonic() + 5)
    payload, retain = got["$SYS/broker/version"]
    assert retain, "a new subscriber gets the retained value"
    assert payload.startswith(b"edgemq version "), payload
    late.loop_stop()
    late.disconnect()


def test_sys_topics_off_when_interval_is_zero(broker_factory) -> None:
    broker = broker_factory(config="[mqtt]\nsys_interval = 0\n")
    watcher, got = _collect(broker.port, "$SYS/#", "watcher")
    time.sleep(1.5)
    watcher.loop_stop()
    watcher.disconnect()
    assert got == {}


def test_qos0_to_a_client_that_does_not_read_is_dropped_not_buffered(broker_factory) -> None:
    """A stuck subscriber must not make the broker buffer without bound (QoS 0 may be lost)."""
    import socket

    broker = broker_factory(config="[mqtt]\nsys_interval = 1\n")
    stuck = socket.create_connection(("127.0.0.1", broker.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # CONNECT (3.1.1, clean, keepalive 0, id "stuck") and SUBSCRIBE flood/# QoS 0; then never read.
    stuck.sendall(b"\x10\x11\x00\x04MQTT\x04\x02\x00\x00\x00\x05stuck")
    stuck.sendall(b"\x82\x0c\x00\x01\x00\x07flood/#\x00")
    # CONNACK and SUBACK: the subscription is in place. Nothing is read after them.
    stuck.settimeout(10)
    acks = b""
    while len(acks) < 9:
        chunk = stuck.recv(9 - len(acks))
        assert chunk, "the broker closed the connection"
        acks += chunk
    assert acks == b"\x20\x02\x00\x00" + b"\x90\x03\x00\x01\x00", acks
    watcher, got = _collect(broker.port, "$SYS/broker/publish/messages/dropped", "watcher")
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flooder")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    payload = b"x" * 65536
    try:
        for _ in range(200):  # 13 MB for a client that reads nothing
            publisher.publish("flood/t", payload, qos=0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            value = got.get("$SYS/broker/publish/messages/dropped")
            if value is not None and int(value[0]) > 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"nothing dropped: {got}")
        rss_kib = int(open(f"/proc/{broker.pid}/status").read().split("VmRSS:")[1].split()[0])
        assert rss_kib < 120_000, f"broker RSS {rss_kib} KiB: it buffered for the stuck client"
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        watcher.loop_stop()
        watcher.disconnect()
        stuck.close()
