"""amqtt's asyncio client (MQTT 3.1.1) against the broker: a second, independent client stack."""

from __future__ import annotations

import asyncio

import pytest
from amqtt.client import MQTTClient

TIMEOUT = 5.0


def _client(client_id: str, **config: object) -> MQTTClient:
    return MQTTClient(client_id=client_id, config={"auto_reconnect": False, "keep_alive": 30, **config})


async def _connected(target, client_id: str, **config: object) -> MQTTClient:
    client = _client(client_id, **config)
    rc = await asyncio.wait_for(client.connect(f"mqtt://{target.host}:{target.port}/"), TIMEOUT)
    assert rc == 0
    return client


def _run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_amqtt_publish_and_receive(target, uid, qos):
    async def scenario() -> None:
        sub = await _connected(target, f"{uid}-sub")
        pub = await _connected(target, f"{uid}-pub")
        try:
            assert await sub.subscribe([(f"{uid}/t", qos)]) == [qos]
            for i in range(5):
                await pub.publish(f"{uid}/t", f"amqtt {i}".encode(), qos=qos)
            for i in range(5):
                msg = await sub.deliver_message(timeout_duration=TIMEOUT)
                assert (msg.topic, bytes(msg.data), msg.qos) == (f"{uid}/t", f"amqtt {i}".encode(), qos)
        finally:
            await pub.disconnect()
            await sub.disconnect()

    _run(scenario())


def test_amqtt_wildcards_and_downgrade(target, uid):
    async def scenario() -> None:
        sub = await _connected(target, f"{uid}-sub")
        pub = await _connected(target, f"{uid}-pub")
        try:
            assert await sub.subscribe([(f"{uid}/+/temp", 1), (f"{uid}/alarm/#", 0)]) == [1, 0]
            await pub.publish(f"{uid}/kitchen/temp", b"21.5", qos=2)
            await pub.publish(f"{uid}/alarm/door/front", b"open", qos=2)
            await pub.publish(f"{uid}/kitchen/humidity", b"40", qos=2)  # matches nothing
            got = {}
            for _ in range(2):
                msg = await sub.deliver_message(timeout_duration=TIMEOUT)
                got[msg.topic] = (bytes(msg.data), msg.qos)
            assert got == {f"{uid}/kitchen/temp": (b"21.5", 1), f"{uid}/alarm/door/front": (b"open", 0)}
            with pytest.raises(asyncio.TimeoutError):
                await sub.deliver_message(timeout_duration=0.3)
        finally:
            await pub.disconnect()
            await sub.disconnect()

    _run(scenario())


def test_amqtt_retained_message(target, uid):
    async def scenario() -> None:
        pub = await _connected(target, f"{uid}-pub")
        await pub.publish(f"{uid}/state", b"on", qos=1, retain=True)
        await pub.disconnect()
        sub = await _connected(target, f"{uid}-sub")
        try:
            await sub.subscribe([(f"{uid}/state", 1)])
            msg = await sub.deliver_message(timeout_duration=TIMEOUT)
            assert (bytes(msg.data), msg.retain) == (b"on", True)
        finally:
            await sub.disconnect()

    _run(scenario())


def test_amqtt_unsubscribe(target, uid):
    async def scenario() -> None:
        sub = await _connected(target, f"{uid}-sub")
        pub = await _connected(target, f"{uid}-pub")
        try:
            await sub.subscribe([(f"{uid}/t", 1)])
            await sub.unsubscribe([f"{uid}/t"])
            await pub.publish(f"{uid}/t", b"unheard", qos=1)
            with pytest.raises(asyncio.TimeoutError):
                await sub.deliver_message(timeout_duration=0.3)
        finally:
            await pub.disconnect()
            await sub.disconnect()

    _run(scenario())
