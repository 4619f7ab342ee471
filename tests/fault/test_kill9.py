"""kill -9 the broker at random moments under QoS 1/2 traffic; prove nothing acknowledged is lost.

The broker's promise (issue 3): once it has sent PUBACK (QoS 1) or PUBREC
(QoS 2), the message reaches every matching persistent session, even after
kill -9; and a QoS 2 message is never delivered twice, also across crashes.

The oracle is the publishers' own record of acknowledgements, never the
broker's word: every message a publisher saw PUBACK/PUBREC for must end up
delivered to every persistent subscriber whose subscription matches it.
Subscribers are online all the time, online in some cycles only, or offline
during the whole storm and connected only at the end; clients are v3.1.1
(clean session 0) and v5 (clean start 0 + session expiry). All subscriptions
are made (SUBACK received) before the first message is published, so every
acknowledged message matches them.

Each cycle: (re)start the broker on the same data directory, connect the
clients (publishers re-send with DUP what was not acknowledged, subscribers
get what the broker re-sends), publish, and SIGKILL the broker after a random
delay. At the end one clean run drains everything and the records are
compared.

The seed is printed; ``KILL9_SEED=<n>`` replays the same plan (client
choices, kill delays, topics). Thread and socket timing is not part of the
seed, so a rare interleaving may need several runs to recur.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from broker.protocol.packets import MQTT_3_1_1, MQTT_5

from .mqttclient import Activity, Publisher, Subscriber, topic_matches

CYCLES = int(os.environ.get("KILL9_CYCLES", "12"))
PUBLISHERS = 4
BUDGET_PER_PUBLISHER = 150  # new messages per publisher per cycle, at most
PACE = 0.012  # seconds between publishes, at most (random): traffic lasts about a second
KILL_DELAY = (0.02, 1.0)  # seconds after the broker listens
DRAIN_TIMEOUT = 60.0
QUIET_TIMEOUT = 4.0  # the final drain ends early if nothing moves this long after publishers finished
TRAFFIC_TIMEOUT = 20.0  # a cycle's clients must get going within this (a busy machine is slow)

CONFIG = """
[limits]
max_queued_messages = 1000000
max_inflight_messages = 20
"""


@dataclass
class SubscriberPlan:
    name: str
    version: int
    filters: list[tuple[str, int]]
    role: str  # "online": every cycle, "flaky": some cycles, "offline": only at the end
    receive_maximum: int | None = None


SUBSCRIBERS = [
    SubscriberPlan("s-on-v3", MQTT_3_1_1, [("fault/#", 2)], "online"),
    SubscriberPlan("s-on-v5", MQTT_5, [("fault/#", 2)], "online", receive_maximum=7),
    SubscriberPlan("s-flaky-v3-q2only", MQTT_3_1_1, [("fault/+/q2", 2)], "flaky"),
    SubscriberPlan("s-flaky-v5-qos1", MQTT_5, [("fault/#", 1)], "flaky", receive_maximum=20),
    SubscriberPlan("s-off-v3", MQTT_3_1_1, [("fault/#", 2)], "offline"),
    SubscriberPlan("s-off-v5-p1", MQTT_5, [("fault/p1/+", 2), ("fault/p3/+", 1)], "offline"),
]


class Storm:
    """Publishers and persistent subscribers around one broker that is stopped again and again."""

    def __init__(self, broker, seed: int, plans: list[SubscriberPlan], publishers: int, config_topics: str,
                 budget: int, pace: float, how: str) -> None:
        self.broker = broker
        self.rng = random.Random(seed)
        self.how = how
        self.budget = budget
        self.pace = pace
        self.activity = Activity()
        self.subscribers = [
            Subscriber(p.name, p.version, p.filters, p.receive_maximum, activity=self.activity) for p in plans
        ]
        self.roles = {p.name: p.role for p in plans}
        self.publishers = [
            Publisher(
                f"p{i}",
                MQTT_5 if i % 2 else MQTT_3_1_1,
                [(f"{config_topics}/p{i}/q1", 1), (f"{config_topics}/p{i}/q2", 2)],
                random.Random(self.rng.randrange(1 << 32)),
                window=self.rng.choice([5, 10, 20]),
                reuse_lowest_packet_id=i < 2,
                activity=self.activity,
            )
            for i in range(publishers)
        ]
        self.history: list[str] = []
        self.busy_kills = 0  # kills that hit flows in progress: the test is vacuous without them

    async def setup(self) -> None:
        """Every subscriber connects once and subscribes (SUBACK = durable), then goes away."""
        broker = self.broker
        for sub in self.subscribers:
            stop = asyncio.Event()
            task = asyncio.ensure_future(sub.run(broker.host, broker.port, stop))
            deadline = time.monotonic() + 5
            while not sub.subscribed and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.01)
            stop.set()
            await task
            assert sub.subscribed, f"{sub.client_id} could not subscribe: {sub.violations}"

    async def prefill(self, per_publisher: int) -> None:
        """Publish while no subscriber is online: long queues for every session."""
        broker = self.broker
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(p.run(broker.host, broker.port, per_publisher, 0, stop))
                 for p in self.publishers]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            p.seq >= per_publisher and p.done for p in self.publishers
        ):
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        self.history.append(f"prefill: {sum(len(p.acknowledged) for p in self.publishers)} acknowledged")

    async def cycle(self, number: int, kill_delay: tuple[float, float]) -> None:
        broker, rng = self.broker, self.rng
        if not broker.running:
            broker.start()
        stop = asyncio.Event()
        online = [
            s for s in self.subscribers
            if self.roles[s.client_id] == "online"
            or (self.roles[s.client_id] == "flaky" and rng.random() < 0.6)
        ]
        tasks = [asyncio.ensure_future(_later(rng.uniform(0, 0.2), s.run(broker.host, broker.port, stop)))
                 for s in online]
        tasks += [asyncio.ensure_future(p.run(broker.host, broker.port, self.budget, self.pace, stop))
                  for p in self.publishers]
        delay = rng.uniform(*kill_delay)
        acked_before = sum(len(p.acknowledged) for p in self.publishers)
        delivered_before = sum(len(s.deliveries) for s in self.subscribers)
        seq_before = [p.seq for p in self.publishers]
        # The stop falls at a random moment of the traffic, not of the clock: on a busy
        # machine the clients take longer to get going, so first wait until they have.
        await self._until_flows_in_progress(seq_before, number)
        await asyncio.sleep(delay)
        await self._until_flows_in_progress(seq_before, number)
        in_flight = sum(len(p.outstanding) for p in self.publishers if p.link is not None)
        awaiting = sum(len(s.awaiting_pubrel) for s in self.subscribers if s.link is not None)
        self.busy_kills += bool(in_flight or awaiting)
        if self.how == "kill":
            broker.kill()
        else:
            broker.stop()
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
        except asyncio.TimeoutError:
            raise AssertionError(f"clients still running 15 s after the stop in cycle {number}") from None
        acked = sum(len(p.acknowledged) for p in self.publishers) - acked_before
        delivered = sum(len(s.deliveries) for s in self.subscribers) - delivered_before
        self.history.append(
            f"cycle {number}: {'killed' if self.how == 'kill' else 'stopped'} after {delay:.3f}s, "
            f"online {[s.client_id for s in online]}, {acked} newly acknowledged, {delivered} delivered, "
            f"{in_flight} publisher messages in flight and {awaiting} subscriber ids awaiting PUBREL at the stop"
        )

    def _flows_in_progress(self) -> bool:
        """A connected publisher waits for an acknowledgement, or a connected subscriber for PUBREL."""
        return any(p.link is not None and p.outstanding for p in self.publishers) or any(
            s.link is not None and s.awaiting_pubrel for s in self.subscribers
        )

    async def _until_flows_in_progress(self, seq_before: list[int], number: int) -> None:
        """Wait until a flow is in progress, or until this cycle's traffic is over."""
        deadline = time.monotonic() + TRAFFIC_TIMEOUT
        while not self._flows_in_progress():
            if all(p.seq - before >= self.budget and not p.outstanding
                   for p, before in zip(self.publishers, seq_before)):
                return  # every publisher sent its budget and got every acknowledgement
            assert time.monotonic() < deadline, (
                f"cycle {number}: no traffic within {TRAFFIC_TIMEOUT} s of the broker's start"
            )
            await asyncio.sleep(0.002)

    async def final_drain(self) -> None:
        broker = self.broker
        broker.start()
        stop = asyncio.Event()
        tasks: list[asyncio.Future] = [
            asyncio.ensure_future(s.run(broker.host, broker.port, stop)) for s in self.subscribers
        ]
        tasks += [asyncio.ensure_future(p.run(broker.host, broker.port, 0, 0, stop)) for p in self.publishers]
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if all(p.done for p in self.publishers):
                if _all_delivered(self.subscribers, self.publishers) and not any(
                    s.awaiting_pubrel for s in self.subscribers
                ):
                    break
                if self.activity.idle_for() > QUIET_TIMEOUT:
                    break
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)

    def verify(self, seed: int, cycles: int, elapsed: float) -> None:
        code = self.broker.stop()
        report, problems = _check(self.subscribers, self.publishers, self.roles)
        print("\n".join(self.history))
        print(report)
        print(f"kill9 seed={seed}; {cycles} cycles in {elapsed:.1f}s")
        assert code == 0, f"broker exit code {code} after SIGTERM"
        assert self.busy_kills >= cycles // 3, (
            f"only {self.busy_kills} of {cycles} stops hit a flow in progress: too thin to test anything"
        )
        tracebacks = self.broker.log(all_runs=True).count("Traceback")
        if tracebacks:
            problems.append(f"the broker logged {tracebacks} tracebacks")
        assert not problems, (
            f"seed {seed}: {len(problems)} problems\n" + "\n".join(problems[:60])
            + ("\n..." if len(problems) > 60 else "") + "\n" + "\n".join(self.history)
        )


def _seed() -> int:
    seed = int(os.environ.get("KILL9_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"\nkill9 seed={seed} (replay: KILL9_SEED={seed})")
    return seed


@pytest.mark.parametrize(
    "how, cycles",
    [
        pytest.param("kill", CYCLES, id="kill9"),
        # The same storm with clean stops: if this passes and kill9 fails, what is
        # missing is crash durability, not the broker's or the clients' logic.
        pytest.param("term", max(3, CYCLES // 3), id="sigterm-control"),
    ],
)
def test_acknowledged_messages_survive_restarts(broker_factory, how, cycles):
    seed = _seed()
    storm = Storm(broker_factory(config=CONFIG), seed, SUBSCRIBERS, PUBLISHERS, "fault",
                  BUDGET_PER_PUBLISHER, PACE, how)

    async def main() -> None:
        await storm.setup()
        for number in range(1, cycles + 1):
            await storm.cycle(number, KILL_DELAY)
        await storm.final_drain()

    started = time.monotonic()
    asyncio.run(main())
    storm.verify(seed, cycles, time.monotonic() - started)


DRAINERS = [
    SubscriberPlan("d-v3-qos2", MQTT_3_1_1, [("drain/#", 2)], "online"),
    SubscriberPlan("d-v5-qos2", MQTT_5, [("drain/#", 2)], "online", receive_maximum=10),
    SubscriberPlan("d-v5-qos1", MQTT_5, [("drain/#", 1)], "online", receive_maximum=20),
]


def test_kill9_while_long_queues_drain(broker_factory):
    """Queues longer than the page the broker keeps in RAM, drained on reconnect while new
    messages keep arriving, killed again and again mid-drain."""
    seed = _seed()
    cycles = max(3, CYCLES // 2)
    storm = Storm(broker_factory(config=CONFIG), seed, DRAINERS, 2, "drain", 60, PACE, "kill")

    async def main() -> None:
        await storm.setup()
        await storm.prefill(2000)
        for number in range(1, cycles + 1):
            await storm.cycle(number, (0.02, 0.4))
        await storm.final_drain()

    started = time.monotonic()
    asyncio.run(main())
    storm.verify(seed, cycles, time.monotonic() - started)


async def _later(delay: float, coro):
    await asyncio.sleep(delay)
    return await coro


def _expected_for(sub: Subscriber, publishers: list[Publisher]) -> dict[str, int]:
    """msg id -> delivery QoS for every acknowledged message a subscriber's filters match."""
    expected = {}
    for pub in publishers:
        for msg_id, (topic, qos) in pub.acknowledged.items():
            granted = [g for f, g in sub.filters if topic_matches(f, topic)]
            if granted:
                expected[msg_id] = min(qos, max(granted))
    return expected


def _all_delivered(subscribers: list[Subscriber], publishers: list[Publisher]) -> bool:
    for sub in subscribers:
        got = {d.msg_id for d in sub.deliveries}
        if any(m not in got for m in _expected_for(sub, publishers)):
            return False
    return True


def _check(subscribers, publishers, roles) -> tuple[str, list[str]]:
    problems: list[str] = []
    lines = []
    published = {m: tq for p in publishers for m, tq in p.published.items()}
    for pub in publishers:
        problems += pub.violations
        if pub.outstanding:
            problems.append(f"{pub.client_id}: {len(pub.outstanding)} messages never completed after the "
                            f"final drain: {[o.msg_id for o in list(pub.outstanding.values())[:10]]}")
        lines.append(f"  {pub.client_id} (v{pub.version}, window {pub.window}, "
                     f"{'lowest free' if pub.reuse_lowest_packet_id else 'sequential'} packet ids): "
                     f"{len(pub.published)} published, {len(pub.acknowledged)} acknowledged, "
                     f"{pub.connections} connections")
    for sub in subscribers:
        problems += sub.violations
        expected = _expected_for(sub, publishers)
        counts = Counter(d.msg_id for d in sub.deliveries)
        missing = sorted((m for m in expected if m not in counts), key=_order)
        qos2_twice = sorted(
            (m for m, n in Counter(d.msg_id for d in sub.deliveries if d.qos == 2).items() if n > 1), key=_order
        )
        qos1_dups = sum(n - 1 for m, n in counts.items() if n > 1 and m not in qos2_twice)
        if missing:
            problems.append(f"{sub.client_id} ({roles[sub.client_id]}): {len(missing)} acknowledged messages "
                            f"never delivered, e.g. {missing[:15]}")
        if qos2_twice:
            detail = [
                (m, [(d.connection, d.packet_id, d.dup) for d in sub.deliveries if d.msg_id == m])
                for m in qos2_twice[:8]
            ]
            problems.append(f"{sub.client_id}: {len(qos2_twice)} QoS 2 messages delivered more than once, "
                            f"e.g. (msg, [(connection, packet id, dup flag)...]) {detail}")
        for d in sub.deliveries:
            if d.msg_id not in published:
                problems.append(f"{sub.client_id}: delivered {d.msg_id!r}, which nobody published")
                continue
            topic, qos = published[d.msg_id]
            granted = [g for f, g in sub.filters if topic_matches(f, topic)]
            if d.topic != topic or not granted or d.qos != min(qos, max(granted)):
                problems.append(f"{sub.client_id}: {d.msg_id} arrived on {d.topic!r} at QoS {d.qos}; "
                                f"published on {topic!r} at QoS {qos}, filters {sub.filters}")
        if sub.awaiting_pubrel:
            problems.append(f"{sub.client_id}: never got PUBREL for packet ids {sorted(sub.awaiting_pubrel)}")
        lines.append(f"  {sub.client_id} ({roles[sub.client_id]}): {len(expected)} expected, "
                     f"{len(counts)} distinct delivered, {len(missing)} missing, {qos1_dups} QoS 1 duplicates, "
                     f"{len(qos2_twice)} QoS 2 delivered twice, {sub.connections} connections")
    return "\n".join(lines), problems


def _order(msg_id: str) -> tuple[str, int]:
    client, seq = msg_id.rsplit(":", 1)
    return client, int(seq)
