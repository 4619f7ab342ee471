"""The bridge through uplink outages and gateway crashes, against real upstream brokers.

The gateway is our broker (a process) with a ``[[bridge]]``; the upstream is a real
mosquitto or our own broker; local devices are raw clients that publish QoS 1 and 2
(``fault.mqttclient.Publisher``) and keep their own record of what the gateway
acknowledged. That record is the oracle (``harness.check_delivery``).
"""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from broker.protocol.packets import MQTT_3_1_1, MQTT_5, Publish

from fault.mqttclient import Link, Publisher, Subscriber, connect_packet

from .harness import (
    Collector,
    Proxy,
    bridge_config,
    check_delivery,
    outage_with_crashes,
    publish,
    reconnect_publishers,
    wait_log,
    wait_until,
)

TOPICS = [("site/sensors/a", 1), ("site/sensors/a", 2), ("site/sensors/b", 2)]


def upstream_of(kind: str, broker_factory, mosquitto_factory):
    if kind == "mosquitto":
        return mosquitto_factory(persistence=True)
    return broker_factory()


def make_publishers(rng: random.Random) -> list[Publisher]:
    return [
        Publisher("dev-v3", MQTT_3_1_1, TOPICS, rng, window=10),
        Publisher("dev-v5", MQTT_5, TOPICS, rng, window=10),
    ]


def connections(gateway) -> int:
    """How many times the bridge connected, in the gateway's log of every run."""
    return len(re.findall(r"Bridge cloud connected", gateway.log(all_runs=True)))


def arrived(subscriber: Subscriber) -> int:
    return len(subscriber.deliveries)


@pytest.mark.parametrize("upstream_kind", ["mosquitto", "ours"])
@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_outage_and_kill9_lose_nothing(broker_factory, mosquitto_factory, upstream_kind, version):
    """Link down, publish, kill -9 the gateway during the outage and again while it drains."""
    upstream = upstream_of(upstream_kind, broker_factory, mosquitto_factory)

    async def main() -> None:
        proxy = await Proxy(upstream.host, upstream.port).start()
        gateway = broker_factory(config=bridge_config(proxy.port, version=version))
        collector = await Collector(Subscriber("cloud-app", MQTT_5, [("gw1/sensors/#", 2)]),
                                    upstream.host, lambda: upstream.port).start()
        sub = collector.subscriber
        publishers = make_publishers(random.Random(11))
        try:
            await wait_log(gateway, "Bridge cloud connected")
            await outage_with_crashes(gateway, proxy, sub, publishers)
            result = check_delivery(publishers, sub)
            print(f"{upstream_kind} v{version}: {result}")
            assert result["acknowledged"] >= 500
        finally:
            await collector.close()
            await proxy.close()

    asyncio.run(main())


@pytest.mark.parametrize("upstream_kind", ["mosquitto", "ours"])
def test_flaky_link_cut_mid_stream(broker_factory, mosquitto_factory, upstream_kind):
    """A proxy drops the uplink after a few KB each time, mid-packet, while devices publish."""
    upstream = upstream_of(upstream_kind, broker_factory, mosquitto_factory)

    async def main() -> None:
        proxy = await Proxy(upstream.host, upstream.port, cut_every=6000, seed=5).start()
        gateway = broker_factory(config=bridge_config(proxy.port, version="5"))
        collector = await Collector(Subscriber("cloud-app", MQTT_5, [("gw1/sensors/#", 2)]),
                                    upstream.host, lambda: upstream.port).start()
        sub = collector.subscriber
        publishers = make_publishers(random.Random(3))
        try:
            await publish(publishers, gateway.port, 300)
            total = sum(len(p.acknowledged) for p in publishers)
            await wait_until(lambda: len({d.msg_id for d in sub.deliveries}) >= total, 60,
                             "everything to cross the flaky link", lambda: arrived(sub))
            check_delivery(publishers, sub)
            assert proxy.cuts >= 3, "the link was never cut: the test proves nothing"
        finally:
            await collector.close()
            await proxy.close()

    asyncio.run(main())


def test_upstream_mosquitto_restarted(broker_factory, mosquitto_factory):
    """The upstream itself goes away (SIGTERM) and comes back on the same port."""
    upstream = mosquitto_factory(persistence=True)

    async def main() -> None:
        gateway = broker_factory(config=bridge_config(upstream.port))
        collector = await Collector(Subscriber("cloud-app", MQTT_3_1_1, [("gw1/sensors/#", 2)]),
                                    upstream.host, lambda: upstream.port).start()
        sub = collector.subscriber
        publishers = make_publishers(random.Random(7))
        try:
            await publish(publishers, gateway.port, 30)
            upstream.stop()
            await publish(publishers, gateway.port, 100)
            upstream.start()
            await publish(publishers, gateway.port, 30)
            total = sum(len(p.acknowledged) for p in publishers)
            await wait_until(lambda: len({d.msg_id for d in sub.deliveries}) >= total, 60,
                             "the backlog to drain", lambda: arrived(sub))
            check_delivery(publishers, sub)
            assert connections(gateway) >= 2
        finally:
            await collector.close()

    asyncio.run(main())


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_new"])
def test_backlog_over_its_byte_limit_drops_and_keeps_reconnecting(broker_factory, mosquitto_factory, policy):
    """60 messages of 100 bytes into a 2,000-byte backlog: 20 are kept, as the policy says."""
    upstream = mosquitto_factory()

    async def main() -> None:
        proxy = await Proxy(upstream.host, upstream.port).start()
        proxy.down()
        extra = f'backlog_max_bytes = 2000\nbacklog_full_policy = "{policy}"'
        gateway = broker_factory(config=bridge_config(proxy.port, extra=extra))
        collector = await Collector(Subscriber("cloud-app", MQTT_5, [("gw1/sensors/#", 1)]),
                                    upstream.host, lambda: upstream.port).start()
        sub = collector.subscriber
        device = Publisher("dev", MQTT_5, [("site/sensors/a", 1)], random.Random(1), window=1,
                           payload_size=100)
        try:
            await publish([device], gateway.port, 60)
            assert len(device.acknowledged) == 60  # the gateway takes them all; the backlog drops
            await wait_log(gateway, r"Bridge cloud: backlog full \(2000 bytes, " + policy + r"\): dropped 40")
            proxy.up()
            await wait_until(lambda: arrived(sub) >= 20, 30, "the backlog to drain")
            await asyncio.sleep(0.5)  # nothing more may come
            got = [int(d.msg_id.rpartition(":")[2]) for d in sub.deliveries]
            expected = list(range(41, 61)) if policy == "drop_oldest" else list(range(1, 21))
            assert got == expected
            # Still bridging after the drops (mosquitto #2256 stopped reconnecting here).
            await publish([device], gateway.port, 1)
            await wait_until(lambda: arrived(sub) == 21, 10, "a message after the drops")
        finally:
            await collector.close()
            await proxy.close()

    asyncio.run(main())


@pytest.mark.parametrize("upstream_kind", ["mosquitto", "ours"])
def test_commands_reach_an_offline_device(broker_factory, mosquitto_factory, upstream_kind):
    """A command sent upstream while the gateway's uplink and the device were both down arrives."""
    upstream = upstream_of(upstream_kind, broker_factory, mosquitto_factory)

    async def main() -> None:
        proxy = await Proxy(upstream.host, upstream.port).start()
        gateway = broker_factory(config=bridge_config(proxy.port, version="5"))
        await wait_log(gateway, "Bridge cloud connected")
        device = Subscriber("valve-7", MQTT_3_1_1, [("site/cmd/#", 1)])
        stop = asyncio.Event()
        task = asyncio.ensure_future(device.run("127.0.0.1", gateway.port, stop))
        await wait_until(lambda: device.subscribed, 10, "the device's subscription")
        stop.set()  # and the device goes offline
        await task
        proxy.down()
        opened = await Link.open(upstream.host, upstream.port, connect_packet("cloud-cmd", MQTT_5))
        assert opened is not None
        link, _ = opened
        link.send(Publish("gw1/cmd/valve-7", b"close|", 1, False, False, 1))
        assert await link.recv(5) is not None  # PUBACK: the upstream has it
        await link.disconnect()
        proxy.up()
        await wait_until(lambda: connections(gateway) >= 2, 15, "the bridge to reconnect")
        for _ in range(50):
            stop = asyncio.Event()
            task = asyncio.ensure_future(device.run("127.0.0.1", gateway.port, stop))
            try:
                await wait_until(lambda: bool(device.deliveries), 0.5, "the command")
            except AssertionError:
                pass
            stop.set()
            await task
            if device.deliveries:
                break
        assert [(d.msg_id, d.topic) for d in device.deliveries] == [("close", "site/cmd/valve-7")]
        await proxy.close()

    asyncio.run(main())


def test_state_topic_follows_the_link(broker_factory, mosquitto_factory):
    """$SYS/broker/connection/<name>/state is 1 while connected and 0 while the link is down."""
    upstream = mosquitto_factory()

    async def main() -> None:
        proxy = await Proxy(upstream.host, upstream.port).start()
        gateway = broker_factory(config=bridge_config(proxy.port))
        await wait_log(gateway, "Bridge cloud connected")

        async def state() -> bytes:
            opened = await Link.open("127.0.0.1", gateway.port, connect_packet("watcher", MQTT_5, 0))
            assert opened is not None
            link, _ = opened
            from broker.protocol.packets import Subscribe, SubscriptionOptions
            link.send(Subscribe(1, [("$SYS/broker/connection/cloud/state", SubscriptionOptions(0))]))
            value = b""
            while True:
                packet = await link.recv(3)
                if packet is None:
                    break
                if isinstance(packet, Publish):
                    assert packet.retain
                    value = packet.payload
                    break
            link.abort()
            return value

        assert await state() == b"1"
        proxy.down()
        await wait_log(gateway, "Bridge cloud disconnected")
        assert await state() == b"0"
        proxy.up()
        await wait_until(lambda: connections(gateway) >= 2, 15, "the bridge to reconnect")
        assert await state() == b"1"
        await proxy.close()

    asyncio.run(main())


@pytest.mark.parametrize(("upstream_kind", "version", "echoes"),
                         [("mosquitto", "3.1.1", 0), ("mosquitto", "5", 0), ("ours", "5", 0), ("ours", "3.1.1", 1)])
def test_both_directions_without_an_echo(broker_factory, mosquitto_factory, upstream_kind, version, echoes):
    """``direction = "both"``: a local message goes up once and does not come back (No Local
    for v5; mosquitto's try_private for 3.1.1); an upstream message comes down once. A 3.1.1
    upstream without try_private (ours) echoes a local message back once, never in a loop
    (the README says to use MQTT 5 there)."""
    upstream = upstream_of(upstream_kind, broker_factory, mosquitto_factory)
    topics = """
[[bridge.topic]]
pattern = "shared/#"
direction = "both"
qos = 1
"""

    async def main() -> None:
        gateway = broker_factory(config=bridge_config(upstream.port, version=version, topics=topics))
        await wait_log(gateway, "Bridge cloud connected")
        local = await Collector(Subscriber("local-app", MQTT_5, [("shared/#", 1)]),
                                "127.0.0.1", lambda: gateway.port).start()
        remote = await Collector(Subscriber("cloud-app", MQTT_5, [("shared/#", 1)]),
                                 upstream.host, lambda: upstream.port).start()
        try:
            device = Publisher("dev", MQTT_5, [("shared/down", 1)], random.Random(1))
            await publish([device], gateway.port, 5)
            cloud = Publisher("cloud", MQTT_5, [("shared/up", 1)], random.Random(2))
            await publish([cloud], upstream.port, 5)
            await wait_until(lambda: len(local.subscriber.deliveries) >= 10 and len(remote.subscriber.deliveries) >= 10,
                             15, "both directions")
            await asyncio.sleep(1.0)  # an echo would come now
            once = [f"dev:{i}" for i in range(1, 6)] + [f"cloud:{i}" for i in range(1, 6)]
            remote_ids = sorted(d.msg_id for d in remote.subscriber.deliveries)
            assert remote_ids == sorted(once), remote_ids
            local_ids = sorted(d.msg_id for d in local.subscriber.deliveries)
            assert local_ids == sorted(once + [f"dev:{i}" for i in range(1, 6)] * echoes), local_ids
        finally:
            await local.close()
            await remote.close()

    asyncio.run(main())


@pytest.mark.parametrize("upstream_kind", ["mosquitto", "ours"])
def test_inbound_exactly_once_through_a_gateway_crash(broker_factory, mosquitto_factory, upstream_kind):
    """Upstream -> local with QoS 1 and 2 while the gateway is killed: every message the upstream
    acknowledged reaches the local device, QoS 2 exactly once (the packet id is kept locally)."""
    upstream = upstream_of(upstream_kind, broker_factory, mosquitto_factory)
    topics = """
[[bridge.topic]]
pattern = "cmd/#"
direction = "in"
qos = 2
local_prefix = "site/"
remote_prefix = "gw1/"
"""

    async def main() -> None:
        gateway = broker_factory(config=bridge_config(upstream.port, version="5", topics=topics))
        await wait_log(gateway, "Bridge cloud connected")
        device = await Collector(Subscriber("valve-7", MQTT_5, [("site/cmd/#", 2)]),
                                 "127.0.0.1", lambda: gateway.port).start()
        cloud = [Publisher("cloud", MQTT_5, [("gw1/cmd/a", 1), ("gw1/cmd/a", 2)], random.Random(4), window=20)]
        try:
            async def crash() -> None:
                await wait_until(lambda: len(device.subscriber.deliveries) >= 60, 30, "commands arriving")
                gateway.kill()
                await asyncio.sleep(0.5)  # the upstream keeps taking commands meanwhile

            await publish(cloud, upstream.port, 300, crash)
            gateway.restart()
            await wait_log(gateway, "Bridge cloud connected", 2)
            await publish(cloud, upstream.port, 0)  # whatever was unacknowledged
            total = len(cloud[0].acknowledged)
            await wait_until(lambda: len({d.msg_id for d in device.subscriber.deliveries}) >= total, 30,
                             "every command", lambda: len(device.subscriber.deliveries))
            check_delivery(cloud, device.subscriber)
        finally:
            await device.close()

    asyncio.run(main())


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_a_message_too_large_for_the_gateway_does_not_break_the_bridge(broker_factory, mosquitto_factory, version):
    """The gateway's max_packet_size: a v5 upstream is told and drops it; a 3.1.1 upstream sends
    it and the bridge drops it (acknowledged upstream, so it is not sent again and again)."""
    upstream = mosquitto_factory()
    config = '[limits]\nmax_packet_size = "1KB"\n' + bridge_config(upstream.port, version=version)

    async def main() -> None:
        gateway = broker_factory(config=config)
        await wait_log(gateway, "Bridge cloud connected")
        device = await Collector(Subscriber("valve-7", MQTT_5, [("site/cmd/#", 1)]),
                                 "127.0.0.1", lambda: gateway.port).start()
        try:
            opened = await Link.open(upstream.host, upstream.port, connect_packet("cloud-cmd", MQTT_5))
            assert opened is not None
            link, _ = opened
            link.send(Publish("gw1/cmd/big", b"big|" + b"x" * 2000, 1, False, False, 1))
            link.send(Publish("gw1/cmd/small", b"small|", 1, False, False, 2))
            assert await link.recv(5) is not None and await link.recv(5) is not None  # two PUBACKs
            await link.disconnect()
            await wait_until(lambda: bool(device.subscriber.deliveries), 10, "the small command")
            await asyncio.sleep(0.5)
            assert [d.msg_id for d in device.subscriber.deliveries] == ["small"]
            assert connections(gateway) == 1, "the bridge had to reconnect"
            dropped_here = "dropping a message on gw1/cmd/big from the upstream" in gateway.log()
            assert dropped_here == (version == "3.1.1")
        finally:
            await device.close()

    asyncio.run(main())


def test_qos0_is_forwarded_while_connected_and_not_kept_through_an_outage(broker_factory, mosquitto_factory):
    """As documented: QoS 0 crosses while the link is up; during an outage it is not queued."""
    upstream = mosquitto_factory()

    async def main() -> None:
        proxy = await Proxy(upstream.host, upstream.port).start()
        gateway = broker_factory(config=bridge_config(proxy.port))
        collector = await Collector(Subscriber("cloud-app", MQTT_5, [("gw1/sensors/#", 0)]),
                                    upstream.host, lambda: upstream.port).start()
        deliveries = collector.subscriber.deliveries

        async def send(payload: bytes) -> None:
            opened = await Link.open("127.0.0.1", gateway.port, connect_packet("sensor-q0", MQTT_5, 0))
            assert opened is not None
            link, _ = opened
            link.send(Publish("site/sensors/t", payload, 0))
            await link.disconnect()

        try:
            await wait_log(gateway, "Bridge cloud connected")
            await send(b"before|")
            await wait_until(lambda: len(deliveries) == 1, 10, "QoS 0 while connected")
            proxy.down()
            await wait_log(gateway, "Bridge cloud disconnected")
            await send(b"during|")
            proxy.up()
            await wait_until(lambda: connections(gateway) >= 2, 15, "the bridge to reconnect")
            await send(b"after|")
            await wait_until(lambda: len(deliveries) >= 2, 10, "QoS 0 after the outage")
            await asyncio.sleep(0.3)
            assert [(d.msg_id, d.qos) for d in deliveries] == [("before", 0), ("after", 0)]
        finally:
            await collector.close()
            await proxy.close()

    asyncio.run(main())
