"""PUBLISH at QoS 0/1/2 in both directions, min(QoS), ordering, exactly-once."""

from __future__ import annotations

import pytest

from . import mqttraw as r


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_delivered_at_each_qos(paho, uid, version, qos):
    sub = paho(f"{uid}-sub", version)
    sub.connect()
    assert sub.subscribe(f"{uid}/t", qos) == [qos]
    pub = paho(f"{uid}-pub", version)
    pub.connect()
    pub.publish(f"{uid}/t", b"hello", qos)
    [msg] = sub.expect_messages(1)
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (f"{uid}/t", b"hello", qos, False)
