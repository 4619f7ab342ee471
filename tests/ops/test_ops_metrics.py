"""/metrics, /healthz and /readyz scraped during real paho traffic; the figures are checked
against what the test itself sent and received."""

from __future__ import annotations

import socket
import threading

from ops_helpers import (
    close, connect, http_get, metrics_base_url, offline_subscriber, publish, scrape, subscribe, value, wait_until,
)

METRICS = """
[metrics]
metrics_enabled = true
metrics_port = 0
[limits]
# The limit holds for online clients too, beyond their in-flight window: a window larger
# than the test's traffic keeps the listener's messages out of its queue.
max_queued_messages = 5
max_inflight_messages = 1000
[mqtt]
sys_interval = 0
"""


def _publish_size(topic: str, payload: bytes, qos: int) -> int:
    """Bytes of a v3.1.1 PUBLISH (remaining length below 128 here)."""
    remaining = 2 + len(topic) + (2 if qos else 0) + len(payload)
    assert remaining < 128
    return 2 + remaining


def test_metrics_count_real_traffic(broker_factory) -> None:
    broker = broker_factory(config=METRICS)
    base = metrics_base_url(broker)
    before = scrape(base)
    assert value(before, "edgemq_messages_received_total", qos="1") == 0

    received: list[bytes] = []
    lock = threading.Lock()

    def on_message(message) -> None:
        with lock:
            received.append(message.payload)

    listener = connect(broker.port, "listener", on_message=on_message)
    subscribe(listener, "live/#", qos=1)
    offline_subscriber(broker.port, "offline-device", "stored/#")

    live = [f"reading {i}".encode() for i in range(40)]
    # Scrapes while the traffic flows: every one succeeds and the counters only grow.
    seen: list[float] = []
    stop_scraping = threading.Event()

    def scraper() -> None:
        while not stop_scraping.is_set():
            seen.append(value(scrape(base), "edgemq_messages_received_total", qos="1"))

    scraping = threading.Thread(target=scraper)
    scraping.start()
    try:
        publish(broker.port, "live/temp", live[:30], qos=1, client_id="pub1")
    finally:
        stop_scraping.set()
        scraping.join(10)
    assert seen and seen == sorted(seen) and seen[-1] <= 30
    publish(broker.port, "live/temp", live[30:], qos=0, client_id="pub0")
    publish(broker.port, "stored/cmd", [b"x" * 10] * 8, qos=1, client_id="pub2")  # 5 queued, 3 dropped
    publish(broker.port, "retained/a", [b"keep"], qos=1, client_id="pub3")
    wait_until(lambda: len(received) == 40, what=f"40 messages at the listener, have {received}")
    # The retained one was published with the retain flag through its own client.
    r = connect(broker.port, "retainer")
    r.publish("retained/b", b"kept", qos=1, retain=True).wait_for_publish(10)
    close(r)

    samples = scrape(base)
    assert value(samples, "edgemq_messages_received_total", qos="0") == 10
    assert value(samples, "edgemq_messages_received_total", qos="1") == 30 + 8 + 1 + 1
    assert value(samples, "edgemq_messages_received_total", qos="2") == 0
    # Sent: 30 QoS 1 and 10 QoS 0 to the listener; nothing to the offline session yet.
    assert value(samples, "edgemq_messages_sent_total", qos="1") == 30
    assert value(samples, "edgemq_messages_sent_total", qos="0") == 10
    assert value(samples, "edgemq_messages_dropped_total", reason="queue_full") == 3
    assert value(samples, "edgemq_messages_dropped_total", reason="slow_consumer") == 0
    assert value(samples, "edgemq_queued_messages") == 5
    assert value(samples, "edgemq_queued_bytes") == 50
    assert value(samples, "edgemq_largest_queue_messages") == 5
    assert value(samples, "edgemq_largest_queue_bytes") == 50
    assert value(samples, "edgemq_retained_messages") == 1
    assert value(samples, "edgemq_subscriptions") == 2
    assert value(samples, "edgemq_sessions", state="connected") == 1
    assert value(samples, "edgemq_sessions", state="disconnected") == 1
    assert value(samples, "edgemq_connections", listener=f"mqtt 127.0.0.1:{broker.port}", protocol_version="3.1.1") == 1
    # listener, offline-device, pub1, pub0, pub2, pub3 and retainer: one TCP connection each.
    assert value(samples, "edgemq_connections_opened_total") == 7
    assert value(samples, "edgemq_connects_total") == 7
    assert value(samples, "edgemq_disconnects_total", reason="client_disconnect") == 6
    # Bytes: at least every PUBLISH the clients sent / the broker sent, and not much more
    # (CONNECT, SUBSCRIBE, acknowledgements: under 40 bytes per packet exchanged).
    published_in = (
        sum(_publish_size("live/temp", p, 1) for p in live[:30])
        + sum(_publish_size("live/temp", p, 0) for p in live[30:])
        + 8 * _publish_size("stored/cmd", b"x" * 10, 1)
        + _publish_size("retained/a", b"keep", 1) + _publish_size("retained/b", b"kept", 1)
    )
    sent_out = sum(_publish_size("live/temp", p, 1) for p in live[:30]) + sum(
        _publish_size("live/temp", p, 0) for p in live[30:]
    )
    bytes_in = value(samples, "edgemq_received_bytes_total")
    bytes_out = value(samples, "edgemq_sent_bytes_total")
    assert published_in + 30 * 4 <= bytes_in <= published_in + 30 * 4 + 40 * 20, bytes_in  # + the PUBACKs
    assert sent_out <= bytes_out <= sent_out + 40 * 60, bytes_out
    # Every QoS 1 PUBLISH was acknowledged after a commit.
    commits = value(samples, "edgemq_storage_commits_total")
    assert commits >= 1
    assert value(samples, "edgemq_storage_commit_duration_seconds_count") == commits
    assert value(samples, "edgemq_storage_commit_duration_seconds_bucket", le="+Inf") == commits
    assert value(samples, "edgemq_storage_database_bytes") > 0
    assert value(samples, "process_resident_memory_bytes") > 1_000_000
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "edgemq_ready") == 1

    # The queued messages drain when the device comes back.
    got: list[bytes] = []
    device = connect(broker.port, "offline-device", clean=False, on_message=lambda m: got.append(m.payload))
    wait_until(lambda: len(got) == 5, what="5 queued messages delivered")
    wait_until(lambda: value(scrape(base), "edgemq_queued_messages") == 0, what="queue gauge back to 0")
    assert value(scrape(base), "edgemq_messages_sent_total", qos="1") == 35
    close(device)
    close(listener)


def _raw_connect(port: int, client_id: bytes, keepalive: int) -> socket.socket:
    """A v3.1.1 CONNECT (clean session) over a plain socket; returns after the CONNACK."""
    variable = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big")
    payload = len(client_id).to_bytes(2, "big") + client_id
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(bytes([0x10, len(variable) + len(payload)]) + variable + payload)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


def test_disconnects_are_counted_by_reason(broker_factory) -> None:
    broker = broker_factory(config=METRICS)
    base = metrics_base_url(broker)
    silent = _raw_connect(broker.port, b"silent", keepalive=1)  # then says nothing
    lost = _raw_connect(broker.port, b"lost", keepalive=60)
    lost.close()  # no DISCONNECT
    rude = _raw_connect(broker.port, b"rude", keepalive=60)
    rude.sendall(b"\x30\x05\x00\x03a/+")  # PUBLISH to a topic with a wildcard
    polite = _raw_connect(broker.port, b"polite", keepalive=60)
    polite.sendall(b"\xe0\x00")  # DISCONNECT
    first = _raw_connect(broker.port, b"twin", keepalive=60)
    second = _raw_connect(broker.port, b"twin", keepalive=60)  # takes the session over

    expected = {
        "keepalive_timeout": 1, "connection_lost": 1, "protocol_error": 1, "client_disconnect": 1,
        "session_taken_over": 1, "broker_shutdown": 0, "storage_error": 0,
    }

    def counted() -> dict[str, float]:
        samples = scrape(base)
        return {reason: value(samples, "edgemq_disconnects_total", reason=reason) for reason in expected}

    wait_until(lambda: counted() == expected, timeout=10, what=f"disconnects {expected}")
    assert value(scrape(base), "edgemq_connects_total") == 6
    for sock in (silent, rude, polite, first, second):
        sock.close()


def test_health_endpoints(broker_factory) -> None:
    broker = broker_factory(config=METRICS)
    base = metrics_base_url(broker)
    assert http_get(base + "/healthz") == (200, "ok\n")
    assert http_get(base + "/readyz") == (200, "ready\n")
    status, body = http_get(base + "/nothing")
    assert status == 404
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 405 ")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # A request head beyond 8 KiB is not read further: the connection closes unanswered.
        sock.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 20_000 + b"\r\n\r\n")
        try:
            answer = sock.recv(100)
        except ConnectionResetError:  # closed with unread input: the kernel may send a reset
            answer = b""
        assert answer == b""
    assert http_get(base + "/healthz") == (200, "ok\n")  # and the listener still serves
    broker.stop()


def test_metrics_are_off_by_default(broker) -> None:
    assert "metrics on" not in broker.log()


def test_grafana_dashboard_uses_only_metrics_the_broker_serves(broker_factory) -> None:
    import json
    import re

    from brokerprocess import REPO_ROOT

    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b((?:edgemq|process)_[a-z_]+)", expr)}
    broker = broker_factory(config=METRICS)
    client = connect(broker.port, "someone")  # edgemq_connections has samples only then
    served = {name for name, _ in scrape(metrics_base_url(broker))}
    close(client)
    assert used and used <= served, used - served
    # Every family of the broker appears on the dashboard (the histogram through _bucket).
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in served if n.startswith("edgemq_")}
    shown = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert families - shown <= {"edgemq_build_info", "edgemq_connections_opened_total"}, families - shown
