"""Helpers for the operations tests: paho clients, queues for offline sessions, scraping."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

from brokerprocess import REPO_ROOT, BrokerProcess, subprocess_env

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def connect(port: int, client_id: str, clean: bool = True,
            on_message: Callable[[mqtt.MQTTMessage], None] | None = None, keepalive: int = 60) -> mqtt.Client:
    """A started paho v3.1.1 client; returns once CONNACK arrived."""
    connected = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                         protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.on_connect = lambda *a: connected.set()
    if on_message is not None:
        client.on_message = lambda c, u, m: on_message(m)
    client.connect("127.0.0.1", port, keepalive=keepalive)
    client.loop_start()
    assert connected.wait(10), "no CONNACK"
    return client


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def subscribe(client: mqtt.Client, topic: str, qos: int = 1) -> None:
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe(topic, qos)
    assert done.wait(10), "no SUBACK"


def offline_subscriber(port: int, client_id: str, topic: str) -> None:
    """A persistent session subscribed to ``topic`` (QoS 1), then disconnected."""
    client = connect(port, client_id, clean=False)
    subscribe(client, topic)
    close(client)


def publish(port: int, topic: str, payloads: list[bytes], qos: int = 1, client_id: str = "publisher") -> None:
    """Publish and wait for every acknowledgement (QoS 1) or the last write (QoS 0)."""
    client = connect(port, client_id)
    infos = [client.publish(topic, payload, qos=qos) for payload in payloads]
    for info in infos:
        info.wait_for_publish(60)
    close(client)


def metrics_base_url(broker: BrokerProcess) -> str:
    match = broker.wait_for_log(r"metrics on (http://\S+)/metrics")
    return match.group(1)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(base_url: str) -> Samples:
    """Every sample of /metrics, parsed by prometheus_client's own parser."""
    status, text = http_get(base_url + "/metrics")
    assert status == 200, text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def run_broker_command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m broker ARGS`` from this checkout, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], cwd=REPO_ROOT, env=subprocess_env(),
        capture_output=True, text=True, timeout=timeout,
    )


def numbered(count: int, size: int = 0) -> list[bytes]:
    return [f"{i:08d}".encode().ljust(size, b".") for i in range(count)]


def payload_number(payload: bytes) -> int:
    match = re.match(rb"\d+", payload)
    assert match is not None, payload
    return int(match.group(0))
