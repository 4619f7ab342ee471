"""The shared process fixtures themselves: a broken fixture would make every end-to-end test lie."""

from __future__ import annotations

import queue
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from brokerprocess import BrokerFactory, MosquittoFactory, subprocess_env


def paho_client(client_id: str, port: int, clean: bool = True) -> tuple[mqtt.Client, queue.Queue[mqtt.MQTTMessage]]:
    """A connected MQTT 3.1.1 client whose received messages land in a queue."""
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    connected: queue.Queue[int] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    client.on_message = lambda _c, _u, message: received.put(message)
    client.on_connect = lambda _c, _u, _flags, reason, _props: connected.put(reason.value)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    assert connected.get(timeout=5) == 0
    return client, received


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_mosquitto_factory_gives_a_working_peer(mosquitto_factory: MosquittoFactory) -> None:
    mosquitto = mosquitto_factory()
    assert mosquitto.running and mosquitto.port
    subscriber, received = paho_client("sub", mosquitto.port)
    subscriber.subscribe("fixture/#", qos=1)[0]
    publisher, _ = paho_client("pub", mosquitto.port)
    info = publisher.publish("fixture/a", b"hello", qos=1)
    info.wait_for_publish(5)
    message = received.get(timeout=5)
    assert (message.topic, message.payload) == ("fixture/a", b"hello")
    close(subscriber)
    close(publisher)
    assert "mosquitto version" in mosquitto.log()
    assert mosquitto.stop() == 0
    assert not mosquitto.running


def test_mosquitto_restart_keeps_port_and_persistent_sessions(mosquitto_factory: MosquittoFactory) -> None:
    mosquitto = mosquitto_factory(persistence=True)
    port = mosquitto.port
    device, _ = paho_client("device", port, clean=False)
    device.subscribe("cmd/device", qos=1)
    close(device)
    publisher, _ = paho_client("pub", port)
    publisher.publish("cmd/device", b"while offline", qos=1).wait_for_publish(5)
    close(publisher)
    mosquitto.restart()
    assert mosquitto.port == port
    device, received = paho_client("device", port, clean=False)
    assert received.get(timeout=5).payload == b"while offline"
    close(device)
    assert len(mosquitto.log(all_runs=True)) > len(mosquitto.log())


def test_mosquitto_extra_config_and_kill(mosquitto_factory: MosquittoFactory) -> None:
    mosquitto = mosquitto_factory(config="max_inflight_messages 3")
    assert "max_inflight_messages 3" in mosquitto.config_path.read_text()
    assert mosquitto.kill() == -signal.SIGKILL
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mosquitto.port), timeout=1).close()


def test_broker_stop_kill_restart(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    first_pid, first_port = broker.pid, broker.port
    assert broker.stop(signal.SIGINT) == 0
    assert not broker.running
    broker.restart()
    assert broker.running and broker.pid != first_pid and broker.port != 0
    with socket.create_connection((broker.host, broker.port), timeout=5):
        pass
    assert broker.kill() == -signal.SIGKILL
    broker.restart()
    assert broker.data_dir.is_dir()
    assert broker.log(all_runs=True).count("listening on") == 3
    assert broker.log().count("listening on") == 1
    assert first_port != 0


def test_broker_that_cannot_start_fails_the_test_with_its_output(broker_factory: BrokerFactory) -> None:
    broker = broker_factory("--config", "/nonexistent/broker.toml", start=False)
    with pytest.raises(pytest.fail.Exception) as info:
        broker.start()
    message = str(info.value)
    assert "broker did not start (it exited before listening; exit code 2)" in message
    assert "error: /nonexistent/broker.toml: cannot read" in message


def test_a_leaked_thread_fails_the_run_instead_of_hanging_it(tmp_path: Path) -> None:
    for helper in ("conftest.py", "brokerprocess.py"):
        shutil.copy(Path(__file__).with_name(helper), tmp_path / helper)
    (tmp_path / "test_leak.py").write_text(
        "import threading\n"
        "forever = threading.Event()\n"
        "def test_leaks_a_thread():\n"
        "    threading.Thread(target=forever.wait, name='leaky', daemon=False).start()\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        # The thread never ends: waiting the full 5 s grace for it would prove nothing more.
        env={**subprocess_env(), "EDGEMQ_LEFTOVER_THREAD_GRACE": "0.5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "1 passed" in result.stdout
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tests left 1 non-daemon thread(s) running: leaky" in result.stderr
