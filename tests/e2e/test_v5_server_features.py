"""MQTT 5 features of the server side: Response Information, Server Reference, and the
mosquitto -v packet log lines."""

from __future__ import annotations

import re

import pytest

from . import mqttraw as r

REQUEST_RESPONSE_INFORMATION = 0x19
RESPONSE_INFORMATION = 0x1A
SERVER_REFERENCE = 0x1C


@pytest.mark.ours_only("mosquitto 2.0 sends no Response Information")
def test_response_information_when_requested(target, uid):
    client = r.RawClient(target.host, target.port, 5)
    connack = client.connect(uid, properties={REQUEST_RESPONSE_INFORMATION: 1})
    assert connack.reason_code == 0
    assert connack.properties.get(RESPONSE_INFORMATION) == f"$response/{uid}/"
    client.disconnect()
    client = r.RawClient(target.host, target.port, 5)
    connack = client.connect(uid)
    assert RESPONSE_INFORMATION not in connack.properties, "only sent when requested"
    client.disconnect()


@pytest.mark.parametrize(("mode", "code"), [("moved", 0x9D), ("use_another", 0x9C)])
def test_server_reference_refuses_with_the_reference(broker_factory, mode, code):
    broker = broker_factory(
        "--memory", config=f'[mqtt]\nserver_reference = "gw2.example:1883"\nserver_reference_mode = "{mode}"\n'
    )
    client = r.RawClient(broker.host, broker.port, 5)
    connack = client.connect("redirected")
    assert connack.reason_code == code
    assert connack.properties.get(SERVER_REFERENCE) == "gw2.example:1883"
    client.wait_closed()
    v3 = r.RawClient(broker.host, broker.port, 4)
    assert v3.connect("redirected-v3").reason_code == 3  # server unavailable
    v3.wait_closed()


def test_verbose_logs_every_packet_with_mosquittos_wording(broker_factory):
    broker = broker_factory("--memory", "-v")
    sub = r.RawClient(broker.host, broker.port, 4)
    sub.connect("sub-1")
    sub.subscribe([("sensors/#", 1)])
    pub = r.RawClient(broker.host, broker.port, 4)
    pub.connect("sensor-1")
    pub.publish("sensors/x", b"21.50", 1)
    pkt = sub.expect(r.PUBLISH)
    sub.ack(pkt)
    sub.send(r.PINGREQ_PACKET)
    sub.expect(r.PINGRESP)
    pub.disconnect()
    expected = [
        r"Sending CONNACK to sub-1 \(0, 0\)",
        r"Received SUBSCRIBE from sub-1",
        r"\tsensors/# \(QoS 1\)",
        r"Sending SUBACK to sub-1",
        r"Received PUBLISH from sensor-1 \(d0, q1, r0, m\d+, 'sensors/x', \.\.\. \(5 bytes\)\)",
        r"Sending PUBACK to sensor-1 \(m\d+, rc0\)",
        r"Sending PUBLISH to sub-1 \(d0, q1, r0, m1, 'sensors/x', \.\.\. \(5 bytes\)\)",
        r"Received PUBACK from sub-1 \(Mid: 1, RC:0\)",
        r"Received PINGREQ from sub-1",
        r"Sending PINGRESP to sub-1",
        r"Received DISCONNECT from sensor-1",
    ]
    for pattern in expected:
        broker.wait_for_log(pattern)
    sub.disconnect()


def test_packets_are_not_logged_by_default(broker_factory):
    broker = broker_factory("--memory")
    client = r.RawClient(broker.host, broker.port, 4)
    client.connect("quiet")
    client.publish("q/x", b"1", 1)
    client.disconnect()
    broker.wait_for_log(r"Client quiet disconnected")
    assert not re.search(r"Received PUBLISH|Sending PUBACK", broker.log())
