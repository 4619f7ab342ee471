"""Sessions resuming with long stored queues while messages keep arriving for them.

Every way a message can reach a session that is attaching, loading, detaching or being
taken over: other clients publish to it all the time; each resuming client sends its
own QoS 1 PUBLISH (to its own subscription) in the same write as its CONNECT, leaves
abruptly, disconnects, or is taken over by a second connection with its client id,
several times over. Afterwards every message the broker acknowledged must have arrived
at every session subscribed to it, QoS 2 exactly once.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from broker.protocol.packets import MQTT_3_1_1, MQTT_5

from .mqttclient import Activity, Publisher, Subscriber, topic_matches

SESSIONS = 12
BACKLOG = 700  # more than the broker keeps of a queue in RAM (500): read back in pages
ROUNDS = 4
CONFIG = "[limits]\nmax_queued_messages = 0\n"


async def _drain(sub: Subscriber, quiet: float, limit: float | None = None) -> None:
    """Handle packets until ``quiet`` s pass with none, the link closes, or ``limit`` s pass."""
    link = sub.link
    assert link is not None
    loop = asyncio.get_running_loop()
    end = None if limit is None else loop.time() + limit
    while True:
        timeout = quiet if end is None else max(0.0, min(quiet, end - loop.time()))
        if end is not None and timeout == 0:
            return
        packet = await link.recv(timeout)
        if packet is None:
            return
        sub.handle(link, packet)


def expected_for(sub: Subscriber, publishers: list[Publisher]) -> set[str]:
    """The message ids the broker acknowledged that match ``sub``'s subscriptions."""
    expected = {
        msg_id
        for publisher in publishers
        for msg_id, (topic, _) in publisher.acknowledged.items()
        if any(topic_matches(f, topic) for f, _ in sub.filters)
    }
    return expected | set(sub.own_acknowledged)


async def _until(condition, timeout: float = 60.0) -> None:
    """Poll ``condition`` (cheap, in-process state) until it holds; fail after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out waiting for the clients"
        await asyncio.sleep(0.02)


async def _publish(broker, publisher: Publisher, budget: int, pace: float) -> None:
    """Publish ``budget`` messages and stay connected until every one is acknowledged."""
    stop = asyncio.Event()
    task = asyncio.ensure_future(publisher.run(broker.host, broker.port, budget, pace, stop))
    await _until(lambda: task.done() or (publisher.seq >= budget and publisher.done))
    stop.set()
    await task
    assert publisher.done and publisher.seq == budget, (publisher.seq, len(publisher.outstanding))


async def _resume_repeatedly(broker, sub: Subscriber, own_topic: str, rng: random.Random) -> None:
    """Reconnect ROUNDS times, each with a pipelined PUBLISH, and leave in a different way."""
    for round_ in range(ROUNDS):
        assert await sub.connect(broker.host, broker.port, publish=(own_topic, 1)), sub.violations
        await _drain(sub, quiet=0.5, limit=rng.uniform(0.05, 0.4))
        link = sub.link
        assert link is not None
        way = (round_ + rng.randrange(3)) % 3
        if way == 0:
            link.abort()  # gone without DISCONNECT (the will case, a reset)
        elif way == 1:
            await link.disconnect()
        else:
            # Taken over: a second connection with the same client id while this one is open.
            old = link
            assert await sub.connect(broker.host, broker.port, publish=(own_topic, 1)), sub.violations
            old.abort()
            await _drain(sub, quiet=0.5, limit=rng.uniform(0.05, 0.3))
            assert sub.link is not None
            sub.link.abort()


@pytest.mark.timeout(240)
def test_every_acknowledged_message_reaches_sessions_that_resume(broker_factory):
    broker = broker_factory(config=CONFIG)
    rng = random.Random(8)
    activity = Activity()

    async def scenario() -> tuple[list[Subscriber], list[Publisher]]:
        subs = []
        for i in range(SESSIONS):
            version = MQTT_5 if i % 2 else MQTT_3_1_1
            sub = Subscriber(f"resume-{i}", version, [("storm/all", 1), (f"storm/own/{i}", 2)], activity=activity)
            assert await sub.connect(broker.host, broker.port)
            link = sub.link
            assert link is not None
            while not sub.subscribed:
                packet = await link.recv(10)
                assert packet is not None, f"no SUBACK for {sub.client_id}"
                sub.handle(link, packet)
            assert sub.link is not None
            await sub.link.disconnect()
            subs.append(sub)
        backlog = Publisher("backlog", MQTT_5, [("storm/all", 1)], rng, window=20, activity=activity)
        await _publish(broker, backlog, BACKLOG, 0)
        # The storm: live publishers to every session while each resumes repeatedly.
        live = [
            Publisher(f"live-{k}", version, [("storm/all", 1), ("storm/all", 2)]
                      + [(f"storm/own/{i}", 1 + i % 2) for i in range(SESSIONS)], rng, activity=activity)
            for k, version in enumerate((MQTT_3_1_1, MQTT_5))
        ]
        publishing = [asyncio.ensure_future(_publish(broker, p, 400, 0.004)) for p in live]
        await asyncio.gather(*(_resume_repeatedly(broker, sub, f"storm/own/{i}", rng) for i, sub in enumerate(subs)))
        await asyncio.gather(*publishing)
        # Everyone collects what is left: until all it was promised arrived, or 3 s of quiet.
        publishers = [backlog, *live]

        async def collect(sub: Subscriber) -> None:
            assert await sub.connect(broker.host, broker.port), sub.violations
            link = sub.link
            assert link is not None
            missing = expected_for(sub, publishers) - {d.msg_id for d in sub.deliveries}
            while missing:
                packet = await link.recv(3.0)
                if packet is None:
                    break
                sub.handle(link, packet)
                if sub.deliveries:
                    missing.discard(sub.deliveries[-1].msg_id)
            await _drain(sub, quiet=0.2)  # (acknowledgements of the last ones)
            await link.disconnect()

        await asyncio.gather(*(collect(sub) for sub in subs))
        return subs, publishers

    subs, publishers = asyncio.run(scenario())
    problems: list[str] = []
    for sub in subs:
        problems += sub.violations
        delivered = Counter(d.msg_id for d in sub.deliveries)
        expected = expected_for(sub, publishers)
        missing = expected - set(delivered)
        if missing:
            problems.append(f"{sub.client_id}: {len(missing)} of {len(expected)} acknowledged messages never arrived, "
                            f"e.g. {sorted(missing)[:5]}")
        twice = [m for d in sub.deliveries if d.qos == 2 for m in [d.msg_id] if delivered[m] > 1]
        if twice:
            problems.append(f"{sub.client_id}: QoS 2 delivered more than once: {sorted(set(twice))[:5]}")
        if not sub.own_acknowledged:
            problems.append(f"{sub.client_id}: none of its pipelined PUBLISHes was acknowledged")
    for publisher in publishers:
        problems += publisher.violations
    assert not problems, "\n".join(problems[:40])
