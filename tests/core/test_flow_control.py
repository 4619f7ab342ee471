"""Backpressure in the core (``broker/core/flow.py``), driven with bytes and no sockets.

The counts come from the rules in the README's limits table: the in-flight window
(``max_inflight_messages``, 20), the high-water mark (3/4 of ``max_queued_messages``) at
which the publishers that feed a queue are held, and the low-water mark (1/2) at which
they go on. A held publisher's PUBLISHes are neither handled nor acknowledged.
"""

from __future__ import annotations

import asyncio
import time

from broker.config import Config
from broker.core.connection import Connection
from broker.core.engine import Engine
from broker.protocol.codec import PacketReader, encode
from broker.protocol.packets import Connect, Puback, Publish, Subscribe, SubscriptionOptions
from broker.storage.memory import MemoryStorage

LIMIT = 10  # max_queued_messages: high water 7, low water 5
WINDOW = 20  # max_inflight_messages (default)

from coretransport import FakeTransport


class Client:
    def __init__(self, engine: Engine, client_id: str) -> None:
        self.transport = FakeTransport(1)
        self.conn = Connection(engine, self.transport)
        self.reader = PacketReader(client_side=True, version=4)
        self.conn.data_received(encode(Connect(client_id, keepalive=0), 4))

    def send(self, *packets) -> None:
        self.conn.data_received(b"".join(encode(p, 4) for p in packets))

    def received(self) -> list:
        data = bytes(self.transport.written)
        self.transport.written.clear()
        return self.reader.feed(data) if data else []


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def setup(**config: object) -> tuple[Engine, Client, Client]:
    storage = MemoryStorage()
    await storage.open()
    engine = Engine(Config(backend="memory", max_queued_messages=LIMIT, sys_interval=0, **config), storage)
    await engine.start()
    sub, pub = Client(engine, "sub"), Client(engine, "pub")
    sub.send(Subscribe(1, [("t/#", SubscriptionOptions(qos=1))]))
    await settle()
    sub.received(), pub.received()
    return engine, sub, pub


def publishes(count: int, topic: str = "t/x", first: int = 1) -> list[Publish]:
    return [Publish(topic, str(i).encode(), 1, False, False, i) for i in range(first, first + count)]


def acked(packets: list) -> list[int]:
    return [p.packet_id for p in packets if isinstance(p, Puback)]


def test_publisher_is_held_at_high_water_and_goes_on_at_low_water() -> None:
    async def main() -> None:
        engine, sub, pub = await setup()
        pub.send(*publishes(30))
        await settle()
        # 20 in flight to the subscriber, 7 queued (the high-water mark): the rest waits.
        assert acked(pub.received()) == list(range(1, 28))
        delivered = sub.received()
        assert len(delivered) == WINDOW
        assert engine.sessions["sub"].queued_count == 7
        sub.send(*[Puback(p.packet_id) for p in delivered])
        await settle()
        assert acked(pub.received()) == [28, 29, 30]  # under the low-water mark: handled now
        rest = sub.received()
        sub.send(*[Puback(p.packet_id) for p in rest])
        await settle()
        rest += sub.received()
        assert [p.payload for p in delivered + rest] == [str(i).encode() for i in range(1, 31)]
        assert engine.dropped_messages == 0

    asyncio.run(main())


def test_a_publisher_that_feeds_only_other_queues_is_not_held() -> None:
    async def main() -> None:
        engine, sub, pub = await setup()
        other = Client(engine, "other")
        other.send(Subscribe(1, [("u/#", SubscriptionOptions(qos=1))]))
        free = Client(engine, "free")
        await settle()
        pub.send(*publishes(40))  # makes "sub" congested and holds pub ("sub" never acknowledges)
        free.send(*publishes(40, topic="u/x"))
        free_acks: list[int] = []
        for _ in range(10):  # "other" reads and acknowledges as it goes
            await settle()
            free_acks += acked(free.received())
            other.send(*[Puback(p.packet_id) for p in other.received() if isinstance(p, Publish)])
        assert free_acks == list(range(1, 41))
        assert len(acked(pub.received())) == WINDOW + 7
        assert not free.conn.held_by and pub.conn.held_by

    asyncio.run(main())


def test_a_held_client_still_has_its_acknowledgements_handled() -> None:
    """A client that publishes into a full queue and subscribes too is never stuck behind itself."""
    async def main() -> None:
        engine, sub, pub = await setup()
        pub.send(Subscribe(2, [("back/#", SubscriptionOptions(qos=1))]))
        feeder = Client(engine, "feeder")
        await settle()
        pub.received()
        pub.send(*publishes(40))  # held now
        await settle()
        assert pub.conn.held_by
        feeder.send(*publishes(5, topic="back/x"))
        await settle()
        got = [p for p in pub.received() if isinstance(p, Publish)]
        assert len(got) == 5
        pub.send(*[Puback(p.packet_id) for p in got])  # behind 13 waiting PUBLISHes
        await settle()
        assert not engine.sessions["pub"].inflight

    asyncio.run(main())


def test_own_messages_into_a_full_queue_are_dropped_not_held() -> None:
    """A client subscribed to what it publishes cannot be held by its own queue: the limit drops."""
    async def main() -> None:
        engine, sub, _ = await setup()
        sub.send(*publishes(100))
        await settle()
        assert len(acked(sub.received())) == 100
        session = engine.sessions["sub"]
        assert len(session.inflight) == WINDOW and session.queued_count == LIMIT
        assert engine.dropped_messages == 100 - WINDOW - LIMIT and engine.stats.dropped_stalled == 0

    asyncio.run(main())


def test_a_stalled_subscriber_lets_its_publishers_go_and_drops_by_reason() -> None:
    async def main() -> None:
        engine, sub, pub = await setup(stalled_subscriber_timeout=1)
        pub.send(*publishes(60))
        await settle()
        assert len(acked(pub.received())) == WINDOW + 7
        engine.flow.check_stalls(time.monotonic())  # not yet
        assert pub.conn.held_by
        engine.flow.check_stalls(time.monotonic() + 1.5)  # nothing acknowledged for 1 s
        await settle()
        assert acked(pub.received()) == list(range(WINDOW + 8, 61))
        assert engine.dropped_messages == engine.stats.dropped_stalled == 60 - WINDOW - LIMIT
        # Reading again: backpressure instead of drops.
        sub.send(*[Puback(p.packet_id) for p in sub.received()])
        await settle()
        assert not engine.sessions["sub"].stalled

    asyncio.run(main())


def test_memory_budget_holds_every_publisher_until_there_is_room() -> None:
    async def main() -> None:
        engine, sub, pub = await setup(max_memory=64 * 1024 * 1024)
        flow = engine.flow
        flow.read_resident = lambda: 63 * 1024 * 1024  # near the budget
        flow.floor = 63 * 1024 * 1024
        flow.check_memory()
        assert flow.memory_full
        pub.send(*publishes(3))
        await settle()
        assert acked(pub.received()) == []  # read, not handled
        sub.send(Puback(999))  # acknowledgements are still handled (an unknown id is ignored)
        flow.read_resident = lambda: 20 * 1024 * 1024
        flow.check_memory()  # room is looked for on housekeeping ticks only
        assert flow.memory_full
        flow.check_memory(tick=True)
        await settle()
        assert not flow.memory_full
        assert acked(pub.received()) == [1, 2, 3]

    asyncio.run(main())


def test_waiting_publishes_past_the_bound_pause_the_socket() -> None:
    async def main() -> None:
        engine, sub, pub = await setup()
        big = b"x" * 4096
        pub.send(*[Publish("t/x", big, 0, False, False, None) for _ in range(5)])
        engine.flow.memory_full = True
        pub.send(*[Publish("t/x", big, 0, False, False, None) for _ in range(20)])  # 80 KiB waiting
        assert pub.transport.paused
        engine.flow.memory_full = False
        pub.conn.wake()
        await settle()
        assert not pub.transport.paused and not pub.conn.waiting

    asyncio.run(main())


def test_memory_budget_lets_go_when_no_message_is_left_to_free() -> None:
    """Paused near the budget; the messages are gone but the broker itself stays over the
    resume mark (connections): waiting would not help, so publishers are read again."""
    async def main() -> None:
        engine, _, pub = await setup(max_memory=64 * 1024 * 1024)
        flow = engine.flow
        flow.read_resident = lambda: 63 * 1024 * 1024
        flow.check_memory()
        assert flow.memory_full
        between = (flow.resume_at + flow.pause_at) // 2
        flow.read_resident = lambda: between
        flow.held_bytes = lambda: flow.margin  # still holding messages: keep waiting
        flow.check_memory(tick=True)
        assert flow.memory_full
        flow.held_bytes = lambda: 0
        flow.check_memory(tick=True)
        assert not flow.memory_full

    asyncio.run(main())


def test_a_subscriber_behind_on_qos0_holds_the_publisher_that_feeds_it() -> None:
    """QoS 0 has no queue: unsent output past SOFT_BYTES holds the feeder (one owner: flow.py)."""
    from broker.core.slow_consumer import SOFT_BYTES

    async def main() -> None:
        engine, sub, pub = await setup()
        sub.send(Subscribe(2, [("q/#", SubscriptionOptions(qos=0))]))
        other = Client(engine, "other")  # feeds nobody slow: never held
        await settle()
        sub.received()
        backlog = [0]
        sub.transport.write_buffer_size = lambda: backlog[0]  # type: ignore[method-assign]

        def delivered() -> list[bytes]:
            return [p.payload for p in sub.received() if isinstance(p, Publish)]

        pub.send(Publish("q/1", b"1"))
        await settle()
        assert delivered() == [b"1"]
        backlog[0] = 2 * SOFT_BYTES  # reading, more slowly than QoS 0 comes
        pub.send(Publish("q/1", b"2"))  # delivered, and holds its publisher
        await settle()
        pub.send(Publish("q/1", b"3"))
        other.send(Publish("elsewhere", b"x"))
        await settle()
        assert delivered() == [b"2"]
        assert pub.conn.held_by and not other.conn.held_by
        backlog[0] = 0
        sub.conn.output_drained()
        await settle()
        assert delivered() == [b"3"]
        assert not pub.conn.held_by
        # Held again; the subscriber goes away: nobody waits for it any more.
        backlog[0] = 2 * SOFT_BYTES
        pub.send(Publish("q/1", b"4"), Publish("q/1", b"5"))
        await settle()
        assert pub.conn.held_by
        sub.conn.close("test", None)
        await settle()
        assert not pub.conn.held_by and not engine.flow.slow_outputs

    asyncio.run(main())
