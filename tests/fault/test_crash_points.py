"""kill -9 at chosen points of the QoS 1/2 flows, on both sides of the broker.

The storm in ``test_kill9.py`` finds problems by chance; these tests aim the
kill at each step of a flow: the client does one step (its packet is on the
wire) and the broker is killed the same instant, before its next commit
would normally run. What must hold afterwards:

* publisher side: a message acknowledged (PUBACK / PUBREC) reaches the
  subscriber; a packet id the broker completed (PUBCOMP) is free again, so a
  new message under the same id is a new message, not a re-send;
* subscriber side: every message arrives, QoS 2 exactly once (method B, as
  ``mqttclient.Subscriber`` implements it: the id is kept from PUBLISH to
  PUBREL and a PUBLISH under a kept id is not delivered again).
"""

from __future__ import annotations

import asyncio

import pytest

from broker.protocol.packets import (
    MQTT_3_1_1,
    MQTT_5,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
)

from .mqttclient import Link, Subscriber, connect_packet, payload_id

VERSIONS = [pytest.param(MQTT_3_1_1, id="v311"), pytest.param(MQTT_5, id="v5")]
# One message in flight to a subscriber at a time: each crash point is then unambiguous.
CONFIG = "[limits]\nmax_inflight_messages = 1\n"


async def publisher(broker, version: int) -> Link:
    opened = await Link.open(broker.host, broker.port, connect_packet("pub", version))
    assert opened is not None
    return opened[0]


async def offline_subscriber(broker, version: int, qos: int) -> Subscriber:
    sub = Subscriber("sub", version, [("c/t", qos)])
    assert await sub.connect(broker.host, broker.port)
    await pump(sub, until=lambda _: sub.subscribed, quiet=5)
    assert sub.link is not None
    await sub.link.disconnect()
    return sub


async def pump(sub: Subscriber, until=None, quiet: float = 1.0):
    """Let ``sub`` handle packets until ``until(packet)`` holds after handling one (returns it),
    or nothing arrives for ``quiet`` s / the link closes (returns None)."""
    link = sub.link
    assert link is not None
    while True:
        packet = await link.recv(quiet)
        if packet is None:
            return None
        sub.handle(link, packet)
        if until is not None and until(packet):
            return packet


async def reconnect_and_drain(broker, sub: Subscriber) -> None:
    assert await sub.connect(broker.host, broker.port)
    await pump(sub)
    assert sub.link is not None
    await sub.link.disconnect()


def messages_of(sub: Subscriber) -> list[str]:
    return [d.msg_id for d in sub.deliveries]


# ----------------------------------------------------------------------------- publisher side


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [1, 2])
def test_kill_right_after_publisher_is_acknowledged(broker_factory, version, qos):
    broker = broker_factory(config=CONFIG)

    async def main():
        sub = await offline_subscriber(broker, version, 2)
        pub = await publisher(broker, version)
        pub.send(Publish("c/t", b"pub:1|", qos, packet_id=1))
        ack = await pub.recv(5)
        assert isinstance(ack, Puback if qos == 1 else Pubrec) and ack.reason_code < 0x80, ack
        broker.kill()
        broker.start()
        if qos == 2:
            # Finish our side of the flow; the broker may or may not still know the id.
            pub = await publisher(broker, version)
            pub.send(Pubrel(1))
            assert isinstance(await pub.recv(5), Pubcomp)
            await pub.disconnect()
        await reconnect_and_drain(broker, sub)
        assert messages_of(sub) == ["pub:1"], sub.violations
        assert not sub.violations

    asyncio.run(main())


@pytest.mark.parametrize("version", VERSIONS)
def test_packet_id_completed_before_kill_is_free_after_restart(broker_factory, version):
    """PUBCOMP says the broker forgot the id. If that is not on disk before PUBCOMP leaves, a
    restart brings the id back, and the next message reusing it is taken for a re-send:
    acknowledged with PUBREC and never routed."""
    broker = broker_factory(config=CONFIG)

    async def main():
        sub = await offline_subscriber(broker, version, 2)
        pub = await publisher(broker, version)
        pub.send(Publish("c/t", b"pub:1|", 2, packet_id=1))
        assert isinstance(await pub.recv(5), Pubrec)
        pub.send(Pubrel(1))
        assert isinstance(await pub.recv(5), Pubcomp)
        broker.kill()
        broker.start()
        pub = await publisher(broker, version)
        pub.send(Publish("c/t", b"pub:2|", 2, packet_id=1))  # a new message: id 1 was completed
        assert isinstance(await pub.recv(5), Pubrec)
        pub.send(Pubrel(1))
        assert isinstance(await pub.recv(5), Pubcomp)
        await pub.disconnect()
        await reconnect_and_drain(broker, sub)
        assert messages_of(sub) == ["pub:1", "pub:2"], sub.violations

    asyncio.run(main())


# ---------------------------------------------------------------------------- subscriber side

SUBSCRIBER_POINTS = {
    # name: (QoS, the packet after whose handling the broker is killed)
    "qos1-after-PUBACK": (1, Publish),
    "qos2-after-PUBREC": (2, Publish),
    "qos2-after-PUBREL-received": (2, Pubrel),
    "qos2-after-PUBCOMP": (2, Pubrel),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("point", list(SUBSCRIBER_POINTS))
def test_kill_at_each_step_of_delivery(broker_factory, version, point):
    """Three queued messages, one in flight at a time; kill at a step of the second one."""
    qos, kind = SUBSCRIBER_POINTS[point]
    broker = broker_factory(config=CONFIG)

    async def main():
        sub = await offline_subscriber(broker, version, qos)
        pub = await publisher(broker, version)
        for n in (1, 2, 3):
            pub.send(Publish("c/t", f"pub:{n}|".encode(), qos, packet_id=n))
            ack = await pub.recv(5)
            if qos == 2:
                pub.send(Pubrel(n))
                assert isinstance(await pub.recv(5), Pubcomp)
            else:
                assert isinstance(ack, Puback)
        await pub.disconnect()

        assert await sub.connect(broker.host, broker.port)
        link = sub.link

        def second_message(packet) -> bool:
            if not isinstance(packet, kind):
                return False
            if isinstance(packet, Publish):
                return payload_id(packet.payload) == "pub:2"
            return len(sub.deliveries) == 2  # the PUBREL of the second message

        if point == "qos2-after-PUBREL-received":
            # Take the PUBREL of message 2 off the wire without answering it.
            while True:
                packet = await link.recv(5)
                assert packet is not None, f"flow stalled: {sub.deliveries}"
                if isinstance(packet, Pubrel) and len(sub.deliveries) == 2:
                    break
                sub.handle(link, packet)
        else:
            assert await pump(sub, until=second_message, quiet=5) is not None, sub.deliveries
        broker.kill()
        link.abort()
        broker.start()
        await reconnect_and_drain(broker, sub)
        got = messages_of(sub)
        if qos == 2:
            assert got == ["pub:1", "pub:2", "pub:3"], (got, sub.violations)
        else:
            assert sorted(set(got)) == ["pub:1", "pub:2", "pub:3"], got  # a re-sent QoS 1 is allowed
        assert not sub.violations
        assert not sub.awaiting_pubrel, "PUBREL never came for " + str(sub.awaiting_pubrel)

    asyncio.run(main())
