"""When a QoS 1 PUBACK may go out (broker/core/ackgate.py), with commits held by the test.

The storage below commits only when the test says so, so each case can tell "released
before the commit" from "waited for the commit" without any timing: a PUBACK may
precede the commit only when every stored copy of its message has been acknowledged
by its subscriber, or when nothing of the message was stored at all.
"""

from __future__ import annotations

import asyncio

import pytest

from broker.config import Config
from broker.core.engine import Engine
from broker.protocol.packets import Puback, Publish, Subscribe, SubscriptionOptions
from broker.storage.memory import MemoryStorage
from core.test_engine_bytes import Client, connect, settle


class HeldCommits(MemoryStorage):
    """MemoryStorage whose commits complete only in ``release()`` (or fail in ``fail()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[asyncio.Future[None]] = []
        self.holding = False
        self.committed = 0  # held commits completed

    def commit(self) -> asyncio.Future[None]:
        done = super().commit()
        if not self.holding:
            return done
        future = asyncio.get_running_loop().create_future()
        self.held.append(future)
        return future

    def release(self) -> None:
        held, self.held = self.held, []
        for future in held:
            future.set_result(None)
            self.committed += 1

    def fail(self) -> None:
        held, self.held = self.held, []
        for future in held:
            future.set_exception(OSError("disk gone"))


async def start() -> tuple[Engine, HeldCommits]:
    storage = HeldCommits()
    await storage.open()
    engine = Engine(Config(backend="memory"), storage)
    await engine.start()
    return engine, storage


async def subscriber(engine: Engine, client_id: str, port: int, topic: str, persistent: bool) -> Client:
    client = await connect(engine, client_id, port, clean=not persistent)
    client.send(Subscribe(1, [(topic, SubscriptionOptions(qos=1))]))
    await settle()
    client.received()
    return client


async def commit_started(storage: HeldCommits) -> None:
    """Wait until a commit is held (it may first wait out the engine's COMMIT_GRACE)."""
    for _ in range(2000):
        if storage.held:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("no commit started")


def acks(client: Client) -> list[int]:
    return [p.packet_id for p in client.received() if isinstance(p, Puback)]


def deliveries(client: Client) -> list[Publish]:
    return [p for p in client.received() if isinstance(p, Publish)]


def run(scenario) -> None:
    asyncio.run(scenario())


def test_puback_released_when_the_persistent_subscriber_acknowledged() -> None:
    async def scenario() -> None:
        engine, storage = await start()
        sub = await subscriber(engine, "sub", 1, "t/#", persistent=True)
        pub = await connect(engine, "pub", 2)
        pub.received()
        storage.holding = True
        pub.send(Publish("t/1", b"x", qos=1, packet_id=5))
        await settle()
        assert acks(pub) == []  # stored for the subscriber, not yet acknowledged by it
        [delivered] = deliveries(sub)
        sub.send(Puback(delivered.packet_id))
        await settle()
        assert not storage.committed, "no commit has completed"
        assert acks(pub) == [5]  # delivered: no need to wait for the commit

    run(scenario)


@pytest.mark.parametrize(
    "case",
    ["offline subscriber", "one of two subscribers acknowledged", "retained", "commit failed"],
)
def test_puback_waits_for_the_commit(case: str) -> None:
    async def scenario() -> None:
        engine, storage = await start()
        sub = await subscriber(engine, "sub", 1, "t/#", persistent=True)
        other = await subscriber(engine, "other", 3, "t/#", persistent=True)
        if case == "offline subscriber":
            other.conn.close("test", None)
            await settle()
        pub = await connect(engine, "pub", 2)
        pub.received()
        storage.holding = True
        pub.send(Publish("t/1", b"x", qos=1, packet_id=5, retain=(case == "retained")))
        await settle()
        [delivered] = deliveries(sub)
        sub.send(Puback(delivered.packet_id))
        if case == "retained":
            [delivered] = deliveries(other)
            other.send(Puback(delivered.packet_id))
        await commit_started(storage)
        await settle()
        assert acks(pub) == [], "released before the commit"
        if case == "commit failed":
            storage.fail()
            await settle()
            assert acks(pub) == []  # never acknowledged: the publisher resends
            assert pub.transport.closed
            return
        storage.release()
        await settle()
        assert acks(pub) == [5]

    run(scenario)


def test_puback_without_stored_copies_does_not_wait() -> None:
    async def scenario() -> None:
        engine, storage = await start()
        clean = await subscriber(engine, "clean", 1, "t/#", persistent=False)
        pub = await connect(engine, "pub", 2)
        pub.received()
        storage.holding = True
        persistent = await subscriber(engine, "p", 3, "other/#", persistent=True)
        pub.send(Publish("t/1", b"x", qos=1, packet_id=6))
        await settle()
        assert [p.topic for p in deliveries(clean)] == ["t/1"]
        assert acks(pub) == [6]  # nothing of it is stored: nothing to wait for
        assert persistent.conn is not None

    run(scenario)


def test_acknowledgements_keep_their_order() -> None:
    """A released PUBACK never overtakes an earlier one that waits for a commit."""

    async def scenario() -> None:
        engine, storage = await start()
        online = await subscriber(engine, "online", 1, "fast/#", persistent=True)
        offline = await subscriber(engine, "offline", 3, "slow/#", persistent=True)
        offline.conn.close("test", None)
        await settle()
        pub = await connect(engine, "pub", 2)
        pub.received()
        storage.holding = True
        pub.send(Publish("slow/1", b"a", qos=1, packet_id=1))  # held in storage: waits
        pub.send(Publish("fast/1", b"b", qos=1, packet_id=2))  # acknowledged below
        await settle()
        [delivered] = deliveries(online)
        online.send(Puback(delivered.packet_id))
        await commit_started(storage)
        await settle()
        assert acks(pub) == []  # 2 is released but must not overtake 1
        storage.release()
        await settle()
        assert acks(pub) == [1, 2]

    run(scenario)


async def drain_commits(engine: Engine) -> None:
    """Start (at once) and finish every commit the engine has buffered or running."""
    while (commit := engine.commit()) is not None:
        await commit


def test_a_message_acknowledged_within_the_grace_never_reaches_the_disk(tmp_path, monkeypatch) -> None:
    """SQLite: the copy's row and its delete cancel out; the commit writes nothing.

    The grace is made long here so that no commit can start while the test runs its
    acknowledgements, however slow the machine; an urgent commit ends it afterwards.
    """
    from broker.core import engine as engine_module
    from broker.storage.sqlite import SqliteStorage

    monkeypatch.setattr(engine_module, "COMMIT_GRACE", 60.0)

    async def scenario() -> None:
        storage = SqliteStorage(tmp_path / "broker.db")
        await storage.open()
        engine = Engine(Config(), storage)
        await engine.start()
        try:
            sub = await subscriber(engine, "sub", 1, "t/#", persistent=True)
            pub = await connect(engine, "pub", 2)
            pub.received()
            await drain_commits(engine)  # the session and its subscription are on disk
            before = storage.commits_done
            for packet_id in range(1, 11):
                pub.send(Publish("t/1", b"x", qos=1, packet_id=packet_id))
                await settle()
                [delivered] = deliveries(sub)
                sub.send(Puback(delivered.packet_id))
                await settle()
                assert acks(pub) == [packet_id]  # at once: delivered
            assert storage.commits_done == before  # none started during the grace
            await drain_commits(engine)
            assert storage.commits_done == before, "a delivered message was written"
            # Not acknowledged in time (the subscriber is away): written, then acknowledged.
            sub.conn.close("test", None)
            await settle()
            await drain_commits(engine)  # the session's disconnect is on disk
            before = storage.commits_done
            pub.send(Publish("t/1", b"y", qos=1, packet_id=11))
            await settle()
            for _ in range(2000):
                if acks(pub) == [11]:
                    break
                await asyncio.sleep(0.001)
            else:
                raise AssertionError("no PUBACK for a message queued for an offline session")
            assert storage.commits_done == before + 1
        finally:
            await engine.shutdown()

    run(scenario)
