"""The storage contract: the tests every ``Storage`` backend must pass.

A backend runs the whole suite by subclassing ``StorageContract`` and giving
it a ``factory`` fixture (as with the abstract tests of aedes-persistence)::

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def factory(self, tmp_path: Path) -> StoreFactory:
            return StoreFactory(lambda: MyStorage(tmp_path / "db"), persistent=True)

The tests use nothing but the ``Storage`` interface (``storage/base.py``).
Tests about surviving a reopen apply only to factories whose stores are
``persistent``; the others skip them. test_contract.py runs the suite on the
built-in backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from broker.protocol import properties as P
from broker.protocol.packets import MQTT_3_1_1, MQTT_5, SubscriptionOptions
from broker.message import Message
from broker.storage.base import NEVER_EXPIRES, QUEUED, RELEASED, SENT, QueueEntry, SessionRecord, Storage, SubscriptionRecord

from .helpers import run_async


@dataclass(frozen=True)
class StoreFactory:
    """How the contract makes stores of one backend.

    ``create()`` returns a new, unopened store; all the stores it returns within
    one test work on the same data: one created after another was closed sees
    what that one wrote, if ``persistent``.
    """

    create: Callable[[], Storage]
    persistent: bool  # a store reopened after close() has the data of the closed one

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Storage]:
        store = self.create()
        await store.open()
        try:
            yield store
        finally:
            await store.close()


def requires_persistence(factory: StoreFactory) -> None:
    if not factory.persistent:
        pytest.skip("this backend does not keep its data across a reopen, by design")


def message(topic: str = "t", payload: bytes = b"x", qos: int = 1, **kwargs) -> Message:
    kwargs.setdefault("retain", False)
    return Message(topic=topic, payload=payload, qos=qos, **kwargs)


def session(client_id: str, expiry: int = 3600, level: int = MQTT_5, at: float | None = None):
    return SessionRecord(client_id, expiry, level, at)


async def whole_queue(store: Storage, client_id: str) -> list[QueueEntry]:
    return await store.read_queue(client_id, 0, 1_000_000)


async def sessions_by_id(store: Storage) -> dict[str, SessionRecord]:
    return {record.client_id: record for record in await store.load_sessions()}


def queue_shape(entries: list[QueueEntry]) -> list[tuple]:
    return [
        (e.seq, e.message.topic, e.message.payload, e.qos, e.retain, e.subscription_ids,
         e.state, e.packet_id)
        for e in entries
    ]


def will_message(topic: str = "dev/1/status") -> Message:
    return Message(
        topic=topic,
        payload=b"offline",
        qos=1,
        retain=True,
        properties={P.CONTENT_TYPE: "text/plain", P.USER_PROPERTY: [("reason", "lost")]},
        expires_at=1_900_000_000.5,
    )


class StorageContract:
    """Every test of the contract; a subclass provides the ``factory`` fixture."""

    @pytest.fixture
    def factory(self) -> StoreFactory:
        raise NotImplementedError("a subclass of StorageContract must define the factory fixture")

    # ---- sessions -------------------------------------------------------------------------


    @run_async
    async def test_sessions_are_saved_and_loaded_in_client_id_order(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("zeta", NEVER_EXPIRES, MQTT_3_1_1))
            store.save_session(session("alpha", 60, MQTT_5, at=1_700_000_000.25))
            store.save_session(session("émoji-🚀", 0, MQTT_5))
            await store.commit()
            records = await store.load_sessions()
        assert [r.client_id for r in records] == ["alpha", "zeta", "émoji-🚀"]
        alpha, zeta, emoji = records
        assert (alpha.expiry_interval, alpha.protocol_level, alpha.disconnected_at) == (
            60, MQTT_5, 1_700_000_000.25)
        assert (zeta.expiry_interval, zeta.protocol_level, zeta.disconnected_at) == (
            NEVER_EXPIRES, MQTT_3_1_1, None)
        assert emoji.expiry_interval == 0
        for record in records:
            assert record.subscriptions == []
            assert record.inbound_qos2 == set()
            assert (record.queued_count, record.queued_bytes, record.last_seq) == (0, 0, 0)


    @run_async
    async def test_save_session_updates_the_row_and_ignores_nested_fields(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c", 10))
            await store.commit()
            updated = session("c", 20, at=123.5)
            # Subscriptions and inbound ids have their own calls; save_session ignores them.
            updated.subscriptions = [SubscriptionRecord("a/b", SubscriptionOptions(qos=1))]
            updated.inbound_qos2 = {7}
            store.save_session(updated)
            await store.commit()
            (record,) = await store.load_sessions()
        assert (record.expiry_interval, record.disconnected_at) == (20, 123.5)
        assert record.subscriptions == [] and record.inbound_qos2 == set()


    @run_async
    async def test_session_values_are_captured_when_saved(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            record = session("c", 10)
            store.save_session(record)
            record.expiry_interval = 99  # the caller reuses its object before the commit
            await store.commit()
            (loaded,) = await store.load_sessions()
        assert loaded.expiry_interval == 10


    @run_async
    async def test_delete_session_cascades_and_keeps_other_sessions(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            shared = message("shared", b"both")
            only_a = message("only-a", b"a")
            for client in ("a", "b"):
                store.save_session(session(client))
                store.save_subscription(client, SubscriptionRecord("x/#", SubscriptionOptions(qos=2)))
                store.add_inbound_qos2(client, 5)
            store.enqueue("a", QueueEntry(1, shared, 1))
            store.enqueue("a", QueueEntry(2, only_a, 1))
            store.enqueue("b", QueueEntry(1, shared, 1))
            await store.commit()
            assert await store.message_count() == 2

            store.delete_session("a")
            await store.commit()
            records = await sessions_by_id(store)
            assert list(records) == ["b"]
            assert await whole_queue(store, "a") == []
            assert [s.topic_filter for s in records["b"].subscriptions] == ["x/#"]
            assert records["b"].inbound_qos2 == {5}
            assert queue_shape(await whole_queue(store, "b")) == [
                (1, shared.topic, b"both", 1, False, [], QUEUED, None)]
            assert await store.message_count() == 1  # only-a was collected, shared kept


    @run_async
    async def test_delete_unknown_session_is_harmless(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("a"))
            store.delete_session("nobody")
            await store.commit()
            assert [r.client_id for r in await store.load_sessions()] == ["a"]


    @run_async
    async def test_session_deleted_and_recreated_in_one_batch(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            old = message("old", b"old")
            store.save_session(session("a", 10))
            store.save_subscription("a", SubscriptionRecord("old/#", SubscriptionOptions()))
            store.add_inbound_qos2("a", 1)
            store.enqueue("a", QueueEntry(1, old, 1))
            store.enqueue("a", QueueEntry(2, old, 1))
            await store.commit()

            # Clean start: everything goes, then a new session starts numbering at 1 again.
            new = message("new", b"new!")
            store.delete_session("a")
            store.save_session(session("a", 20))
            store.save_subscription("a", SubscriptionRecord("new/#", SubscriptionOptions(qos=1)))
            store.add_inbound_qos2("a", 2)
            store.enqueue("a", QueueEntry(1, new, 1))
            await store.commit()

            (record,) = await store.load_sessions()
            assert record.expiry_interval == 20
            assert [s.topic_filter for s in record.subscriptions] == ["new/#"]
            assert record.inbound_qos2 == {2}
            assert (record.queued_count, record.queued_bytes, record.last_seq) == (1, 4, 1)
            assert queue_shape(await whole_queue(store, "a")) == [
                (1, new.topic, b"new!", 1, False, [], QUEUED, None)]
            assert await store.message_count() == 1


    @run_async
    async def test_writes_for_a_session_before_its_deletion_in_the_same_batch_vanish(
        self, factory: StoreFactory
    ) -> None:
        async with factory.opened() as store:
            m = message()
            store.save_session(session("a"))
            store.save_subscription("a", SubscriptionRecord("f", SubscriptionOptions()))
            store.enqueue("a", QueueEntry(1, m, 1))
            store.add_inbound_qos2("a", 3)
            store.delete_session("a")
            await store.commit()
            assert await store.load_sessions() == []
            assert await whole_queue(store, "a") == []
            assert await store.message_count() == 0


    # ---- subscriptions ----------------------------------------------------------------------


    @run_async
    async def test_subscriptions_keep_every_option_and_identifier(self, factory: StoreFactory) -> None:
        subs = [
            SubscriptionRecord("$share/group/sensors/+/temp", SubscriptionOptions(qos=1), 1),
            SubscriptionRecord("a/#", SubscriptionOptions(qos=2, no_local=True), None),
            SubscriptionRecord(
                "b/+",
                SubscriptionOptions(qos=0, retain_as_published=True, retain_handling=2),
                268_435_455,
            ),
            SubscriptionRecord("c", SubscriptionOptions(qos=1, retain_handling=1), 42),
            SubscriptionRecord("maison/température", SubscriptionOptions(qos=2), None),
        ]
        async with factory.opened() as store:
            store.save_session(session("c1"))
            for sub in reversed(subs):
                store.save_subscription("c1", sub)
            await store.commit()
            (record,) = await store.load_sessions()
        assert record.subscriptions == subs  # sorted by topic filter


    @run_async
    async def test_subscription_replace_and_delete(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            store.save_subscription("c", SubscriptionRecord("f", SubscriptionOptions(qos=0), 1))
            store.save_subscription("c", SubscriptionRecord("g", SubscriptionOptions(qos=0)))
            await store.commit()
            store.save_subscription("c", SubscriptionRecord("f", SubscriptionOptions(qos=2), 9))
            store.delete_subscription("c", "g")
            store.delete_subscription("c", "never-subscribed")
            await store.commit()
            (record,) = await store.load_sessions()
            assert record.subscriptions == [
                SubscriptionRecord("f", SubscriptionOptions(qos=2), 9)]

            # Within one batch the last call wins.
            store.save_subscription("c", SubscriptionRecord("h", SubscriptionOptions(qos=1)))
            store.delete_subscription("c", "h")
            store.delete_subscription("c", "f")
            store.save_subscription("c", SubscriptionRecord("f", SubscriptionOptions(qos=1), 3))
            await store.commit()
            (record,) = await store.load_sessions()
            assert record.subscriptions == [
                SubscriptionRecord("f", SubscriptionOptions(qos=1), 3)]


    @run_async
    async def test_subscription_values_are_captured_when_saved(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            sub = SubscriptionRecord("f", SubscriptionOptions(qos=1), 5)
            store.save_subscription("c", sub)
            sub.options.qos = 2
            sub.subscription_id = 6
            await store.commit()
            (record,) = await store.load_sessions()
            assert record.subscriptions == [SubscriptionRecord("f", SubscriptionOptions(qos=1), 5)]


    @run_async
    async def test_subscriptions_are_per_client(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            for client in ("a", "b"):
                store.save_session(session(client))
            store.save_subscription("a", SubscriptionRecord("same", SubscriptionOptions(qos=1)))
            store.save_subscription("b", SubscriptionRecord("same", SubscriptionOptions(qos=2)))
            store.delete_subscription("a", "same")
            await store.commit()
            records = await sessions_by_id(store)
        assert records["a"].subscriptions == []
        assert records["b"].subscriptions == [SubscriptionRecord("same", SubscriptionOptions(qos=2))]


    # ---- queues -------------------------------------------------------------------------------


    @run_async
    async def test_read_queue_pages_in_seq_order(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            expected = []
            for seq in range(1, 26):
                m = message(f"t/{seq}", bytes([seq]) * seq)
                store.enqueue("c", QueueEntry(seq, m, 1))
                expected.append((seq, m.topic, bytes([seq]) * seq, 1, False, [], QUEUED, None))
            await store.commit()

            pages = []
            after = 0
            while True:
                page = await store.read_queue("c", after, 10)
                if not page:
                    break
                assert len(page) <= 10
                pages.append(len(page))
                after = page[-1].seq
            assert pages == [10, 10, 5]
            assert queue_shape(await whole_queue(store, "c")) == expected
            assert queue_shape(await store.read_queue("c", 20, 3)) == expected[20:23]
            assert queue_shape(await store.read_queue("c", 25, 10)) == []
            assert await store.read_queue("c", 0, 0) == []
            assert await store.read_queue("somebody-else", 0, 10) == []
            first = (await store.read_queue("c", 0, 1))[0]
            assert first.message.topic == "t/1" and first.message.qos == 1


    @run_async
    async def test_read_queue_with_gaps_in_seq(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            m = message()
            for seq in (3, 7, 100, 1000):
                store.enqueue("c", QueueEntry(seq, m, 1))
            await store.commit()
            assert [e.seq for e in await store.read_queue("c", 5, 2)] == [7, 100]
            assert [e.seq for e in await store.read_queue("c", 100, 10)] == [1000]
            assert [e.seq for e in await store.read_queue("c", 2, 1)] == [3]


    @run_async
    async def test_queue_entry_fields_round_trip(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            m = message("t", b"payload", qos=2)
            store.enqueue("c", QueueEntry(1, m, qos=0))
            store.enqueue("c", QueueEntry(2, m, qos=1, retain=True, subscription_ids=[1]))
            store.enqueue("c", QueueEntry(3, m, qos=2, subscription_ids=[268_435_455, 1, 77],
                                          state=SENT, packet_id=65535))
            store.enqueue("c", QueueEntry(4, m, qos=2, state=RELEASED, packet_id=1))
            await store.commit()
            assert queue_shape(await whole_queue(store, "c")) == [
                (1, m.topic, b"payload", 0, False, [], QUEUED, None),
                (2, m.topic, b"payload", 1, True, [1], QUEUED, None),
                (3, m.topic, b"payload", 2, False, [268_435_455, 1, 77], SENT, 65535),
                (4, m.topic, b"payload", 2, False, [], RELEASED, 1),
            ]


    @run_async
    async def test_update_entry_moves_through_states(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            m = message(qos=2)
            store.enqueue("c", QueueEntry(1, m, 2))
            store.enqueue("c", QueueEntry(2, m, 2))
            store.update_entry("c", 2, SENT, 11)  # same batch as the enqueue
            await store.commit()
            assert [(e.state, e.packet_id) for e in await whole_queue(store, "c")] == [
                (QUEUED, None), (SENT, 11)]

            store.update_entry("c", 1, SENT, 10)
            store.update_entry("c", 2, RELEASED, 11)
            store.update_entry("c", 99, SENT, 1)  # no such entry: nothing happens
            await store.commit()
            assert [(e.state, e.packet_id) for e in await whole_queue(store, "c")] == [
                (SENT, 10), (RELEASED, 11)]

            # Back to QUEUED (a reconnect re-sends from scratch), twice in one batch.
            store.update_entry("c", 1, RELEASED, 12)
            store.update_entry("c", 1, QUEUED, None)
            await store.commit()
            assert [(e.state, e.packet_id) for e in await whole_queue(store, "c")] == [
                (QUEUED, None), (RELEASED, 11)]
            assert [e.seq for e in await whole_queue(store, "c")] == [1, 2]


    @run_async
    async def test_delete_entry(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            for seq in range(1, 6):
                m = message(payload=b"p" * seq)
                store.enqueue("c", QueueEntry(seq, m, 1))
            await store.commit()
            store.delete_entry("c", 3)
            store.delete_entry("c", 1)
            store.delete_entry("c", 42)  # unknown: harmless
            store.delete_entry("nobody", 1)
            await store.commit()
            assert [e.seq for e in await whole_queue(store, "c")] == [2, 4, 5]
            store.update_entry("c", 4, SENT, 1)
            store.delete_entry("c", 4)  # update then delete in one batch
            store.delete_entry("c", 5)
            await store.commit()
            assert [e.seq for e in await whole_queue(store, "c")] == [2]
            assert await store.message_count() == 1


    @run_async
    async def test_load_sessions_reports_queue_stats_without_the_queue(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("a"))
            store.save_session(session("b"))
            store.save_session(session("empty"))
            big = message(payload=b"b" * 1000)
            small = message(payload=b"s" * 10)
            store.enqueue("a", QueueEntry(5, big, 1))
            store.enqueue("a", QueueEntry(6, small, 1))
            store.enqueue("a", QueueEntry(9, big, 1))  # the same message twice counts twice
            store.enqueue("b", QueueEntry(1, small, 1, state=SENT, packet_id=3))
            await store.commit()
            records = await sessions_by_id(store)
            assert (records["a"].queued_count, records["a"].queued_bytes, records["a"].last_seq) == (
                3, 2010, 9)
            assert (records["b"].queued_count, records["b"].queued_bytes, records["b"].last_seq) == (
                1, 10, 1)
            assert (records["empty"].queued_count, records["empty"].queued_bytes,
                    records["empty"].last_seq) == (0, 0, 0)

            store.delete_entry("a", 9)
            store.delete_entry("b", 1)
            await store.commit()
            records = await sessions_by_id(store)
            assert (records["a"].queued_count, records["a"].queued_bytes, records["a"].last_seq) == (
                2, 1010, 6)
            assert (records["b"].queued_count, records["b"].queued_bytes, records["b"].last_seq) == (
                0, 0, 0)


    @run_async
    async def test_enqueue_and_set_retained_store_the_message(self, factory: StoreFactory) -> None:
        """No separate step stores a message: the first reference writes it."""
        async with factory.opened() as store:
            store.save_session(session("c"))
            store.enqueue("c", QueueEntry(1, message("q", b"queued"), 1))
            store.set_retained("t", message("t", b"kept", retain=True))
            await store.commit()
            assert await store.message_count() == 2
            assert [m.payload for m in await store.load_retained()] == [b"kept"]


    # ---- inbound QoS 2 ----------------------------------------------------------------------------


    @run_async
    async def test_inbound_qos2_add_and_remove(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("a"))
            store.save_session(session("b"))
            for packet_id in (1, 2, 65535):
                store.add_inbound_qos2("a", packet_id)
            store.add_inbound_qos2("a", 2)  # twice: still one id
            store.add_inbound_qos2("b", 2)
            await store.commit()
            records = await sessions_by_id(store)
            assert records["a"].inbound_qos2 == {1, 2, 65535}
            assert records["b"].inbound_qos2 == {2}

            store.remove_inbound_qos2("a", 2)
            store.remove_inbound_qos2("a", 3)  # unknown: harmless
            store.remove_inbound_qos2("nobody", 1)
            await store.commit()
            records = await sessions_by_id(store)
            assert records["a"].inbound_qos2 == {1, 65535}
            assert records["b"].inbound_qos2 == {2}


    @run_async
    async def test_inbound_qos2_within_one_batch(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("a"))
            store.add_inbound_qos2("a", 1)
            await store.commit()
            store.add_inbound_qos2("a", 7)
            store.remove_inbound_qos2("a", 7)  # PUBLISH and PUBREL in one batch
            store.add_inbound_qos2("a", 1)  # already stored: adding again is legal...
            store.remove_inbound_qos2("a", 1)  # ...and the removal must still reach the disk
            store.remove_inbound_qos2("a", 9)
            store.add_inbound_qos2("a", 9)
            await store.commit()
            (record,) = await store.load_sessions()
            assert record.inbound_qos2 == {9}


    # ---- retained messages ---------------------------------------------------------------------------


    @run_async
    async def test_retained_set_replace_and_clear(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            first = Message("r/1", b"one", 1, True, {P.CONTENT_TYPE: "text/plain"}, 2e9)
            second = Message("r/2", b"two", 0, True)
            store.set_retained("r/1", first)
            store.set_retained("r/2", second)
            await store.commit()
            assert await store.load_retained() == [first, second]
            assert await store.message_count() == 2

            replacement = Message("r/1", b"uno", 2, True)
            store.set_retained("r/1", replacement)
            store.set_retained("r/never-set", None)
            await store.commit()
            assert await store.load_retained() == [replacement, second]
            assert await store.message_count() == 2  # the replaced message was collected

            store.set_retained("r/2", None)
            await store.commit()
            assert await store.load_retained() == [replacement]
            assert await store.message_count() == 1


    @run_async
    async def test_retained_replaced_twice_in_one_batch(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            messages = [Message("r", bytes([i]), 1, True) for i in range(3)]
            for m in messages:
                store.set_retained("r", m)
            await store.commit()
            assert await store.load_retained() == [messages[2]]
            assert await store.message_count() == 1
            store.set_retained("r", None)
            store.set_retained("r", messages[2])
            await store.commit()
            assert await store.load_retained() == [messages[2]]
            assert await store.message_count() == 1


    @run_async
    async def test_retained_topics_sharing_a_message_replaced_together(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            shared = Message("r", b"shared", 1, True)
            for topic in ("r/1", "r/2", "r/3"):
                store.set_retained(topic, shared)
            await store.commit()
            replacement = Message("r", b"new", 1, True)
            store.set_retained("r/1", replacement)
            store.set_retained("r/2", replacement)
            await store.commit()
            assert [m.payload for m in await store.load_retained()] == [b"new", b"new", b"shared"]
            assert await store.message_count() == 2
            store.set_retained("r/3", replacement)
            await store.commit()
            assert await store.message_count() == 1


    @run_async
    async def test_retained_message_shared_with_queues(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            m = Message("r", b"state", 1, True)
            store.set_retained("r", m)
            store.set_retained("r-copy", m)
            store.enqueue("c", QueueEntry(1, m, 1, retain=True))
            await store.commit()
            assert await store.message_count() == 1
            store.set_retained("r", None)
            store.set_retained("r-copy", None)
            await store.commit()
            assert await store.message_count() == 1  # still queued for c
            assert (await whole_queue(store, "c"))[0].message.payload == b"state"
            store.delete_entry("c", 1)
            await store.commit()
            assert await store.message_count() == 0


    # ---- messages: stored once, collected when unreferenced ----------------------------------------


    @run_async
    async def test_message_fanned_out_is_stored_once_and_collected_after_last_entry(
        self, factory: StoreFactory
    ) -> None:
        async with factory.opened() as store:
            m = message("fan/out", b"to three", qos=2)
            for client in ("a", "b", "c"):
                store.save_session(session(client))
                store.enqueue(client, QueueEntry(1, m, 1))
            await store.commit()
            assert await store.message_count() == 1
            for client in ("a", "b", "c"):
                (entry,) = await whole_queue(store, client)
                assert entry.message == m
                assert entry.message.payload == b"to three"

            for remaining, client in ((1, "a"), (1, "b"), (0, "c")):
                store.delete_entry(client, 1)
                await store.commit()
                assert await store.message_count() == remaining


    @run_async
    async def test_equal_messages_are_distinct_rows(self, factory: StoreFactory) -> None:
        """Identity, not value, makes a message the same: two publishes of the same bytes
        are two messages (deleting one entry must not take the other's message)."""
        async with factory.opened() as store:
            store.save_session(session("c"))
            for seq in range(1, 6):
                store.enqueue("c", QueueEntry(seq, message(), 1))
                if seq == 3:
                    await store.commit()
            await store.commit()
            assert await store.message_count() == 5
            store.delete_entry("c", 2)
            await store.commit()
            assert await store.message_count() == 4
            assert [e.seq for e in await whole_queue(store, "c")] == [1, 3, 4, 5]


    @run_async
    async def test_message_read_back_and_queued_again_is_not_copied(self, factory: StoreFactory) -> None:
        """A retained message loaded from storage and queued for a new subscriber, or an
        entry read back and queued for another session, refers to the same row."""
        async with factory.opened() as store:
            store.save_session(session("a"))
            store.save_session(session("b"))
            m = message("keep/me", b"retained", retain=True)
            store.set_retained("keep/me", m)
            store.enqueue("a", QueueEntry(1, message("other", b"o"), 1))
            await store.commit()
            (loaded,) = await store.load_retained()
            store.enqueue("b", QueueEntry(1, loaded, 1))
            (entry,) = await whole_queue(store, "a")
            store.enqueue("b", QueueEntry(2, entry.message, 1))
            await store.commit()
            assert await store.message_count() == 2
            assert [e.message.payload for e in await whole_queue(store, "b")] == [b"retained", b"o"]


    @run_async
    async def test_unreferenced_message_is_dropped_at_commit(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            store.enqueue("c", QueueEntry(1, message(), 1))
            store.delete_entry("c", 1)
            await store.commit()
            assert await store.message_count() == 0


    @run_async
    async def test_message_can_move_between_references_within_one_step(self, factory: StoreFactory) -> None:
        """Garbage collection waits for the commit: e.g. a shared-subscription message
        taken from a leaving member (its last reference) and queued for another."""
        async with factory.opened() as store:
            store.save_session(session("a"))
            store.save_session(session("b"))
            m = message("shared", b"work")
            store.enqueue("a", QueueEntry(1, m, 1))
            await store.commit()

            store.delete_entry("a", 1)
            store.enqueue("b", QueueEntry(1, m, 1))
            await store.commit()
            assert await store.message_count() == 1
            assert (await whole_queue(store, "b"))[0].message.payload == b"work"

            store.delete_session("b")
            store.set_retained("shared", m)
            await store.commit()
            assert await store.load_retained() == [m]


    @run_async
    async def test_properties_of_every_kind_round_trip(self, factory: StoreFactory) -> None:
        properties = {
            P.PAYLOAD_FORMAT_INDICATOR: 1,
            P.MESSAGE_EXPIRY_INTERVAL: 0xFFFFFFFF,
            P.CONTENT_TYPE: "application/json; charset=utf-8 ✓",
            P.RESPONSE_TOPIC: "réponse/主题/🚀",
            P.CORRELATION_DATA: b"\x00\x01\xff\xfe binary \x00",
            P.SUBSCRIPTION_IDENTIFIER: [1, 127, 128, 16_383, 16_384, 268_435_455],
            P.TOPIC_ALIAS: 0,
            P.USER_PROPERTY: [
                ("name", "value"),
                ("name", "repeated name, kept in order"),
                ("ключ", "значение 🙂"),
                ("", ""),
            ],
        }
        async with factory.opened() as store:
            store.save_session(session("c"))
            m = Message("p", b"", 1, False, dict(properties))
            store.enqueue("c", QueueEntry(1, m, 1))
            store.set_retained("p", m)
            plain = message("plain")
            store.enqueue("c", QueueEntry(2, plain, 1))
            await store.commit()
            entries = await whole_queue(store, "c")
            retained = await store.load_retained()
        assert entries[0].message.properties == properties
        assert entries[0].message.payload == b""
        assert entries[1].message.properties == {}
        assert retained[0].properties == properties
        user = entries[0].message.properties[P.USER_PROPERTY]
        assert all(type(pair) is tuple for pair in user)


    @run_async
    async def test_unstorable_properties_are_refused_at_once(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            with pytest.raises(TypeError):
                store.enqueue("c", QueueEntry(1, message(properties={P.CONTENT_TYPE: 1.5}), 1))
            with pytest.raises(ValueError):
                store.set_retained("t", message(properties={P.MESSAGE_EXPIRY_INTERVAL: -1}))
            bad = message(properties={P.USER_PROPERTY: [("a", 1)]})
            with pytest.raises(TypeError):
                store.enqueue("c", QueueEntry(1, bad, 1))
            # Nothing of them was kept, and the store is still usable.
            good = message()
            store.enqueue("c", QueueEntry(1, good, 1))
            await store.commit()
            assert len(await whole_queue(store, "c")) == 1


    @run_async
    async def test_expires_at_and_payload_round_trip(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            values = [
                (None, b""),
                (1_700_000_123.456789, bytes(range(256))),
                (0.0, b"\x00" * 70_000),
            ]
            for seq, (expires_at, payload) in enumerate(values, 1):
                m = Message("e", bytearray(payload), 1, False, expires_at=expires_at)
                store.enqueue("c", QueueEntry(seq, m, 1))
            await store.commit()
            entries = await whole_queue(store, "c")
        assert [(e.message.expires_at, e.message.payload) for e in entries] == values
        assert all(type(e.message.payload) is bytes for e in entries)


    @run_async
    async def test_read_results_are_independent_copies(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            m = message(properties={P.USER_PROPERTY: [("k", "v")], P.SUBSCRIPTION_IDENTIFIER: [1]})
            store.enqueue("c", QueueEntry(1, m, 1, subscription_ids=[4]))
            await store.commit()
            (entry,) = await whole_queue(store, "c")
            entry.message.properties[P.USER_PROPERTY].append(("x", "y"))
            entry.message.properties[P.MESSAGE_EXPIRY_INTERVAL] = 5
            entry.subscription_ids.append(5)
            (again,) = await whole_queue(store, "c")
            assert again.message.properties == {P.USER_PROPERTY: [("k", "v")],
                                                P.SUBSCRIPTION_IDENTIFIER: [1]}
            assert again.subscription_ids == [4]


    # ---- commit semantics ---------------------------------------------------------------------------


    @run_async
    async def test_commit_returns_a_future_of_the_running_loop(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            future = store.commit()
            assert isinstance(future, asyncio.Future)
            assert future.get_loop() is asyncio.get_running_loop()
            assert await future is None
            idle = store.commit()  # nothing written since: resolves without a transaction
            assert await idle is None


    @run_async
    async def test_each_awaited_commit_with_writes_is_one_transaction(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            before = store.commits_done
            for i in range(3):
                store.save_session(session(f"c{i}"))
                await store.commit()
            assert store.commits_done == before + 3
            await store.commit()  # nothing new
            assert store.commits_done == before + 3


    @run_async
    async def test_concurrent_commits_are_grouped(self, factory: StoreFactory) -> None:
        clients = 50

        async def publisher(store: Storage, n: int) -> None:
            m = message(f"t/{n}", b"%d" % n)
            store.enqueue(f"c{n}", QueueEntry(1, m, 1))
            await store.commit()

        async with factory.opened() as store:
            for n in range(clients):
                store.save_session(session(f"c{n}"))
            await store.commit()
            before = store.commits_done
            await asyncio.gather(*(publisher(store, n) for n in range(clients)))
            done = store.commits_done - before
            records = await store.load_sessions()
        assert len(records) == clients and all(r.queued_count == 1 for r in records)
        # A backend may group them (SQLite: one transaction, see test_sqlite.py) or not.
        assert 1 <= done <= clients


    @run_async
    async def test_reads_see_writes_that_were_not_committed(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            store.save_subscription("c", SubscriptionRecord("f", SubscriptionOptions(qos=1)))
            m = Message("r", b"now", 1, True)
            store.enqueue("c", QueueEntry(1, m, 1))
            store.set_retained("r", m)
            # No commit() call: reads must still see all of it.
            (entry,) = await whole_queue(store, "c")
            assert entry.message.payload == b"now"
            store.add_inbound_qos2("c", 4)
            (record,) = await store.load_sessions()
            assert record.queued_count == 1 and record.inbound_qos2 == {4}
            assert len(record.subscriptions) == 1
            store.set_retained("r", None)
            assert await store.load_retained() == []


    @run_async
    async def test_enqueue_and_ack_within_one_batch_cancel_out(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_session(session("c"))
            await store.commit()
            m = message()
            store.enqueue("c", QueueEntry(1, m, 1))
            store.update_entry("c", 1, SENT, 1)
            store.delete_entry("c", 1)
            await store.commit()
            assert await whole_queue(store, "c") == []
            assert await store.message_count() == 0
            (record,) = await store.load_sessions()
            assert (record.queued_count, record.last_seq) == (0, 0)


    # ---- persistence (stores that survive a reopen) ----------------------------------------------------------------------


    @run_async
    async def test_close_writes_what_is_buffered(self, factory: StoreFactory) -> None:
        requires_persistence(factory)
        store = factory.create()
        await store.open()
        store.save_session(session("c"))
        m = message()
        store.enqueue("c", QueueEntry(1, m, 1))
        await store.close()  # no commit() before
        async with factory.opened() as store:
            (record,) = await store.load_sessions()
            assert record.queued_count == 1


    @run_async
    async def test_everything_survives_a_reopen(self, factory: StoreFactory) -> None:
        requires_persistence(factory)
        props = {P.USER_PROPERTY: [("ü", "v")], P.CORRELATION_DATA: b"\x00\xff"}
        async with factory.opened() as store:
            store.save_session(session("a", NEVER_EXPIRES, MQTT_3_1_1, at=12.5))
            store.save_session(session("b", 60))
            store.save_subscription("a", SubscriptionRecord(
                "x/+", SubscriptionOptions(2, True, True, 1), 7))
            store.add_inbound_qos2("a", 300)
            m = Message("x/1", b"data", 2, True, props, 1e10)
            store.enqueue("a", QueueEntry(4, m, 2, True, [7], SENT, 12))
            store.enqueue("b", QueueEntry(1, m, 1))
            store.set_retained("x/1", m)
            await store.commit()
            before_sessions = await store.load_sessions()
            before_queue = await whole_queue(store, "a")
        async with factory.opened() as store:
            assert await store.load_sessions() == before_sessions
            assert await whole_queue(store, "a") == before_queue
            assert await store.load_retained() == [m]
            assert await store.message_count() == 1
            # New rows never reuse the ids of stored ones: the old message stays intact.
            store.enqueue("b", QueueEntry(2, message("fresh", b"new"), 1))
            await store.commit()
            assert await store.message_count() == 2
            assert [e.message.payload for e in await whole_queue(store, "b")] == [b"data", b"new"]
            assert await store.load_retained() == [m]


    # ---- delayed wills ---------------------------------------------------------------------------


    @run_async
    async def test_wills_are_saved_replaced_and_deleted(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            assert await store.load_wills() == []
            store.save_will("a", will_message("a/status"), 100.0)
            store.save_will("b", will_message("b/status"), 200.0)
            store.save_will("a", will_message("a/other"), 150.0)  # a new will replaces the old one
            await store.commit()
            wills = await store.load_wills()
            assert [(c, m.topic, d) for c, m, d in wills] == [("a", "a/other", 150.0), ("b", "b/status", 200.0)]
            _, loaded, _ = wills[1]
            assert loaded == will_message("b/status")  # payload, QoS, retain, properties, expiry
            store.delete_will("a")
            store.delete_will("nobody")  # deleting what is not there is harmless
            await store.commit()
            assert [c for c, _, _ in await store.load_wills()] == ["b"]


    @run_async
    async def test_a_will_saved_and_deleted_in_one_batch_is_gone(self, factory: StoreFactory) -> None:
        async with factory.opened() as store:
            store.save_will("a", will_message(), 100.0)
            store.delete_will("a")
            await store.commit()
            assert await store.load_wills() == []


    @run_async
    async def test_wills_survive_a_reopen_and_hold_no_message_reference(self, factory: StoreFactory) -> None:
        requires_persistence(factory)
        async with factory.opened() as store:
            store.save_will("a", will_message(), 123.25)
            await store.commit()
            assert await store.message_count() == 0  # self-contained: nothing for GC to keep
        async with factory.opened() as store:
            [(client_id, loaded, due)] = await store.load_wills()
            assert (client_id, loaded, due) == ("a", will_message(), 123.25)
