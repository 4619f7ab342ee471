"""The firmware examples, run briefly as they are: the sensor node and the actuator on
the MicroPython Unix port (simulated hardware, 64 KB heap), the Pi gateway on CPython,
each against mosquitto and against our broker (the `edge_broker` fixture)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from brokerprocess import free_port
from edge_harness import REPO, EdgeBroker, Peer, Runtime

EXAMPLES = REPO / "firmware_examples"


@pytest.fixture
def unix_port(mpy_lib: Path, tmp_path: Path) -> Any:
    rt = Runtime("micropython", mpy_lib, tmp_path)
    yield rt
    rt.cleanup()


def dead_port() -> int:
    """A port nobody listens on (outside the range that port 0 and outgoing connections use)."""
    return free_port()


def sim_env(state: Path, port: int, **extra: object) -> dict[str, str]:
    env = {"EDGE_BROKER": "127.0.0.1", "EDGE_PORT": str(port), "EDGE_STATE_DIR": str(state)}
    env.update({f"EDGE_{k}": str(v) for k, v in extra.items()})
    return env


def test_sensor_node_keeps_readings_through_outages_and_deep_sleep(
    unix_port: Runtime, edge_broker: EdgeBroker, tmp_path: Path
) -> None:
    broker = edge_broker
    example = EXAMPLES / "sensor_node"
    state = tmp_path / "flash"
    state.mkdir()
    run = lambda port: unix_port.run(  # noqa: E731
        example / "main.py", extra_paths=(example,),
        env=sim_env(state, port, INTERVAL_MS=100, FLUSH_MS=300),
    )
    # Two wake-ups without a broker: the readings stay on "flash" across the resets.
    for seq in (0, 1):
        prog = run(dead_port())
        assert f"READING {seq}" in "\n".join(prog.lines) and prog.lines[-2:] == [f"PENDING {seq + 1}", "SLEEP 100"], (
            prog.output()
        )
    peer = Peer(broker.host, broker.port, "peer-sensor")
    peer.subscribe("sensors/#", 1)
    prog = run(broker.port)
    assert prog.lines[-2:] == ["PENDING 0", "SLEEP 100"], prog.output()
    msgs = peer.wait_for(3)
    assert [m[0] for m in msgs] == ["sensors/sensor-sim0001/temperature"] * 3
    assert [json.loads(m[3])["seq"] for m in msgs] == [0, 1, 2]
    assert all(m[1] == 1 for m in msgs)
    # Always on: three readings with the radio up, then a clean stop.
    prog = unix_port.run(
        example / "main.py", extra_paths=(example,),
        env=sim_env(state, broker.port, INTERVAL_MS=150, DEEP_SLEEP=0, CYCLES=3, FLUSH_MS=3000),
    )
    assert prog.lines[-1] == "PENDING 0", prog.output()
    assert [json.loads(m[3])["seq"] for m in peer.wait_for(6)] == [0, 1, 2, 3, 4, 5]
    peer.close()


def test_sensor_node_delivers_every_reading_taken_while_the_broker_was_down(
    unix_port: Runtime, edge_broker: EdgeBroker, tmp_path: Path
) -> None:
    """The outage story: always on, the broker stops for a while and comes back; every
    reading taken meanwhile arrives, in order, once it is back."""
    example = EXAMPLES / "sensor_node"
    state = tmp_path / "flash"
    state.mkdir()
    peer = Peer(edge_broker.host, edge_broker.port, "peer-outage", clean_session=False)
    peer.subscribe("sensors/#", 1)
    n = 12
    prog = unix_port.start(
        example / "main.py", extra_paths=(example,),
        env=sim_env(state, edge_broker.port, INTERVAL_MS=250, DEEP_SLEEP=0, CYCLES=n, FLUSH_MS=20000),
    )
    prog.expect("READING 2")
    edge_broker.stop()
    down_from = int(prog.expect("READING").split()[1])
    prog.expect(f"READING {down_from + 3}")  # readings taken with the broker away
    edge_broker.start()
    prog.finish(60)
    assert prog.lines[-1] == "PENDING 0", prog.output()
    peer.wait_connected()
    seqs = [json.loads(m[3])["seq"] for m in peer.wait_for(n, timeout=30)]
    assert sorted(set(seqs)) == list(range(n)), seqs  # QoS 1: at least once
    assert [s for i, s in enumerate(seqs) if s not in seqs[:i]] == list(range(n))  # in order
    assert (state / "seq.txt").read_text() == str(n) and not (state / "seq.txt.tmp").exists()
    peer.close()


def test_actuator_runs_commands_sent_while_offline_exactly_once(
    unix_port: Runtime, edge_broker: EdgeBroker, tmp_path: Path
) -> None:
    broker = edge_broker
    example = EXAMPLES / "actuator"
    state = tmp_path / "flash"
    state.mkdir()
    run = lambda ms: unix_port.run(  # noqa: E731
        example / "main.py", extra_paths=(example,), env=sim_env(state, broker.port, RUN_MS=ms)
    )
    first = run(300)
    assert "CONNECTED new session" in first.lines, first.output()
    peer = Peer(broker.host, broker.port, "peer-actuator")
    peer.subscribe("actuators/actuator-sim0001/state", 1)
    for i, what in enumerate(["on", "off", "on"], 1):
        peer.publish("actuators/actuator-sim0001/cmd", json.dumps({"relay": what, "id": i}), qos=2)
    second = run(800)
    assert "CONNECTED session present" in second.lines, second.output()
    assert [line for line in second.lines if line.startswith(("RELAY", "DONE"))] == [
        "RELAY on", "DONE 1", "RELAY off", "DONE 2", "RELAY on", "DONE 3",
    ]
    states = [json.loads(m[3]) for m in peer.wait_for(3)]
    assert states == [{"relay": w, "cmd": i} for i, w in enumerate(["on", "off", "on"], 1)]
    third = run(300)
    assert not [line for line in third.lines if line.startswith("DONE")], third.output()
    peer.close()


def test_pi_gateway_bridges_sysfs_sensors(edge_broker: EdgeBroker, tmp_path: Path, mpy_lib: Path) -> None:
    broker = edge_broker
    sysfs = tmp_path / "sys"
    w1 = sysfs / "bus/w1/devices/28-0000075e1a2b"
    w1.mkdir(parents=True)
    (w1 / "w1_slave").write_text(
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
    )
    zone = sysfs / "class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("48312\n")
    (zone / "type").write_text("cpu-thermal\n")
    peer = Peer(broker.host, broker.port, "peer-gateway")
    peer.subscribe("gateway/#", 1)
    cpython = Runtime("cpython", mpy_lib, tmp_path)
    prog = cpython.run(
        EXAMPLES / "pi_gateway" / "gateway.py",
        "--host", broker.host, "--port", broker.port, "--client-id", "gw1", "--interval", "0.1",
        "--count", "2", "--outbox", tmp_path / "outbox.bin", "--sysfs-root", sysfs,
    )
    assert prog.lines[0] == "sensors: 28-0000075e1a2b, cpu-thermal", prog.output()
    assert prog.lines[-1] == "pending at exit: 0", prog.output()
    msgs = peer.wait_for(6)
    readings = [(t, json.loads(p)) for t, _, _, p in msgs if not t.endswith("/status")]
    assert [(t, r["seq"], r["value"]) for t, r in readings] == [
        ("gateway/gw1/28-0000075e1a2b", 0, 23.125), ("gateway/gw1/cpu-thermal", 0, 48.312),
        ("gateway/gw1/28-0000075e1a2b", 1, 23.125), ("gateway/gw1/cpu-thermal", 1, 48.312),
    ]
    assert [p for t, _, _, p in msgs if t.endswith("/status")] == [b"online", b"offline"]
    peer.close()


def test_sensor_node_over_mutual_tls_with_certificates_from_our_tool(
    unix_port: Runtime, broker_factory: Any, tmp_path: Path
) -> None:
    """The sensor node as its README says to set it up for TLS: the CA, the broker's and
    the device's certificates from `python -m broker certs` (DER on the board), our
    broker's TLS listener requiring a client certificate and a password."""
    from broker import certs

    site = tmp_path / "certs"
    certs.init(site, hosts=["localhost"], ips=["127.0.0.1"])
    certs.issue_client(site, "sensor-sim0001")
    where = certs.paths(site)
    device = certs.client_paths(site, "sensor-sim0001")
    from test_edge_auth_ours import make_password_file

    passwd = make_password_file(tmp_path / "passwd", "sensor", "s3cret")
    broker = broker_factory(
        "--memory",
        config=(
            f'[auth]\npassword_file = "{passwd}"\n'
            f'[[listener]]\nport = 0\ncertfile = "{where.server_cert}"\nkeyfile = "{where.server_key}"\n'
            f'cafile = "{where.ca_cert}"\nrequire_certificate = true\nallow_anonymous = false\n'
        ),
    )
    tls_port = int(broker.wait_for_log(r"mqtt over TLS \S+ .*listening on 127\.0\.0\.1:(\d+)").group(1))
    peer = Peer(broker.host, broker.port, "peer-tls")
    peer.subscribe("sensors/#", 1)
    example = EXAMPLES / "sensor_node"
    state = tmp_path / "flash"
    state.mkdir()
    tls = dict(
        SSL=1, CA=where.ca_der, CERT=device.cert_der, KEY=device.key_der, SERVER_HOSTNAME="localhost",
        USER="sensor", PASSWORD="s3cret",
    )
    prog = unix_port.run(
        example / "main.py", extra_paths=(example,),
        env=sim_env(state, tls_port, INTERVAL_MS=100, DEEP_SLEEP=0, CYCLES=3, FLUSH_MS=5000, **tls),
    )
    assert prog.lines[-1] == "PENDING 0" and not any("OFFLINE" in x for x in prog.lines), prog.output()
    assert [json.loads(m[3])["seq"] for m in peer.wait_for(3)] == [0, 1, 2]
    assert re.search(r"New client connected from 127\.0\.0\.1:\d+ as sensor-sim0001\b", broker.log())
    # Without the device certificate the handshake is refused and nothing is delivered.
    prog = unix_port.run(
        example / "main.py", extra_paths=(example,),
        env=sim_env(state, tls_port, INTERVAL_MS=100, DEEP_SLEEP=0, CYCLES=1, FLUSH_MS=1000,
                    **dict(tls, CERT="", KEY="")),
    )
    assert any(x.startswith("OFFLINE") for x in prog.lines) and prog.lines[-1] == "PENDING 1", prog.output()
    peer.close()
