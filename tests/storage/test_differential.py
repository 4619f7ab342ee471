"""SQLite and the in-memory store must agree on random operation sequences.

The in-memory backend applies every call at once; SQLite folds a batch into
final row states, cancels writes out and collects messages when the batch is
written, and while out of space it keeps batches unwritten and reads around
them. Random sequences (shaped like the engine's use: seqs increase per
session, a stored message is referenced in the same step) are applied to both;
after every commit, read and reopen the observable state must be the same.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from broker.protocol import properties as P
from broker.protocol.packets import SubscriptionOptions
from broker.message import Message
from broker.storage.base import QUEUED, RELEASED, SENT, QueueEntry, SessionRecord, Storage, SubscriptionRecord
from broker.storage.memory import MemoryStorage
from broker.storage.sqlite import SqliteStorage

from .helpers import run_async

CLIENTS = ["a", "b", "c"]
TOPICS = ["t/1", "t/2", "t/3"]


def message_shape(m: Message) -> tuple:
    # Ids are compared by content: SQLite restarts its id counter from the
    # highest stored id after a reopen, so the two stores may number differently.
    return (m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at)


async def snapshot(store: Storage) -> dict:
    sessions = await store.load_sessions()
    queues = {}
    for client in CLIENTS:
        queues[client] = [
            (e.seq, message_shape(e.message), e.qos, e.retain, e.subscription_ids, e.state,
             e.packet_id)
            for e in await store.read_queue(client, 0, 10_000)
        ]
    return {
        "sessions": sessions,
        "queues": queues,
        "retained": [message_shape(m) for m in await store.load_retained()],
        "messages": await store.message_count(),
    }


class Scenario:
    """Generates engine-like calls and applies each to both stores."""

    def __init__(self, rng: random.Random, stores: list[Storage]) -> None:
        self.rng = rng
        self.stores = stores
        self.last_seq = {c: 0 for c in CLIENTS}
        self.alive: set[str] = set()  # clients with a session row
        self.counter = 0

    def each(self, method: str, *args) -> None:
        for store in self.stores:
            getattr(store, method)(*args)


    def new_message(self) -> list[Message]:
        self.counter += 1
        rng = self.rng
        properties = {}
        if rng.random() < 0.3:
            properties[P.USER_PROPERTY] = [("n", str(self.counter)), ("ü", "✓")]
        if rng.random() < 0.2:
            properties[P.CORRELATION_DATA] = bytes([self.counter % 256, 0, 255])
        fields = dict(
            topic=rng.choice(TOPICS),
            payload=b"m%d" % self.counter * rng.randint(0, 3),
            qos=rng.randint(0, 2),
            retain=rng.random() < 0.2,
            expires_at=rng.choice([None, 1e9 + self.counter]),
        )
        # One object per store: each store recognises its own objects.
        return [Message(properties=dict(properties), **fields) for _ in self.stores]

    def save_session(self, client: str) -> None:
        rng = self.rng
        self.each("save_session", SessionRecord(
            client, rng.choice([0, 60, 0xFFFFFFFF]), rng.choice([4, 5]),
            rng.choice([None, float(rng.randint(1, 10**9))])))
        self.alive.add(client)

    def step(self) -> None:
        rng = self.rng
        client = rng.choice(CLIENTS)
        kind = rng.choices(
            ["session", "delete_session", "subscribe", "unsubscribe", "publish", "update",
             "delete", "inbound_add", "inbound_remove", "retain", "clear_retained", "orphan"],
            weights=[3, 1, 2, 1, 12, 6, 6, 2, 2, 2, 1, 1],
        )[0]
        if kind == "session" or (client not in self.alive and kind != "delete_session"):
            # Like the engine, a session row exists before anything of the session is
            # written (the open-time sweep drops rows of clients without one).
            self.save_session(client)
        elif kind == "delete_session":
            self.each("delete_session", client)
            self.alive.discard(client)
            self.last_seq[client] = 0  # a clean start numbers from 1 again
        elif kind == "subscribe":
            options = SubscriptionOptions(rng.randint(0, 2), rng.random() < 0.5,
                                          rng.random() < 0.5, rng.randint(0, 2))
            sub_id = rng.choice([None, rng.randint(1, 268_435_455)])
            self.each("save_subscription", client,
                      SubscriptionRecord(rng.choice(TOPICS + ["#"]), options, sub_id))
        elif kind == "unsubscribe":
            self.each("delete_subscription", client, rng.choice(TOPICS + ["#"]))
        elif kind == "publish":
            copies = self.new_message()
            targets = rng.sample(sorted(self.alive), rng.randint(1, len(self.alive)))
            sub_ids = rng.choice([[], [rng.randint(1, 9)]])
            for target in targets:
                self.last_seq[target] += 1
                seq = self.last_seq[target]
                state, packet_id = rng.choice([(QUEUED, None), (QUEUED, None), (SENT, seq)])
                for store, m in zip(self.stores, copies):
                    store.enqueue(target, QueueEntry(seq, m, m.qos, m.retain, list(sub_ids),
                                                     state, packet_id))
            if copies[0].retain and rng.random() < 0.5:
                for store, m in zip(self.stores, copies):
                    store.set_retained(m.topic, m)
        elif kind == "update":
            seq = rng.randint(1, self.last_seq[client] + 1)
            state = rng.choice([QUEUED, SENT, RELEASED])
            self.each("update_entry", client, seq, state,
                      None if state == QUEUED else rng.randint(1, 65535))
        elif kind == "delete":
            seq = rng.randint(1, self.last_seq[client] + 1)
            self.each("delete_entry", client, seq)
        elif kind == "inbound_add":
            self.each("add_inbound_qos2", client, rng.randint(1, 5))
        elif kind == "inbound_remove":
            self.each("remove_inbound_qos2", client, rng.randint(1, 5))
        elif kind == "retain":
            copies = self.new_message()
            for store, m in zip(self.stores, copies):
                store.set_retained(m.topic, m)
        elif kind == "clear_retained":
            self.each("set_retained", rng.choice(TOPICS), None)
        elif kind == "orphan":  # stored, then unreferenced in the same step: dropped at the commit
            for store, m in zip(self.stores, self.new_message()):
                store.set_retained("orphan/x", m)
                store.set_retained("orphan/x", None)


@pytest.mark.parametrize("seed", range(10))
@run_async
async def test_sqlite_agrees_with_memory(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    memory = MemoryStorage()
    path = tmp_path / "broker.db"
    sqlite = SqliteStorage(path, sync="normal")
    await memory.open()
    await sqlite.open()
    try:
        scenario = Scenario(rng, [memory, sqlite])
        for _ in range(60):
            for _ in range(rng.randint(1, 15)):
                scenario.step()
            boundary = rng.random()
            if boundary < 0.6:
                await memory.commit()
                await sqlite.commit()
            elif boundary < 0.9:
                pass  # the reads below flush the batch themselves
            else:
                await memory.commit()
                await sqlite.close()
                sqlite = SqliteStorage(path, sync="normal")
                await sqlite.open()
                scenario.stores[1] = sqlite
            assert await snapshot(sqlite) == await snapshot(memory)
    finally:
        await sqlite.close()
        await memory.close()


async def limit_growth(store: SqliteStorage, pages: int | None) -> None:
    """Let the database grow no further than ``pages`` (as a full disk would), or freely."""
    if pages is None:
        pages = (await store._fetch("PRAGMA page_count"))[0][0]
        await store._fetch(f"PRAGMA max_page_count = {pages}")
    else:
        await store._fetch(f"PRAGMA max_page_count = {pages}")


@pytest.mark.parametrize("seed", range(10))
@run_async
async def test_sqlite_out_of_space_agrees_with_memory(tmp_path: Path, seed: int) -> None:
    """While commits fail for lack of space, reads of the queues see the unwritten batches."""
    rng = random.Random(seed)
    memory = MemoryStorage()
    sqlite = SqliteStorage(tmp_path / "broker.db", sync="off", retry_interval=0.005)
    await memory.open()
    await sqlite.open()
    pending: list[asyncio.Future[None]] = []
    full_reads = 0
    try:
        scenario = Scenario(rng, [memory, sqlite])
        for _ in range(10):
            scenario.step()
        await memory.commit()
        await sqlite.commit()
        await limit_growth(sqlite, None)
        for round_ in range(60):
            for _ in range(rng.randint(1, 15)):
                scenario.step()
            if rng.random() < 0.3:  # a large message: it no longer fits
                client = rng.choice(sorted(scenario.alive))
                copies = scenario.new_message()
                scenario.last_seq[client] += 1
                for store, m in zip(scenario.stores, copies):
                    m.payload = b"L" * 20_000
                    store.enqueue(client, QueueEntry(scenario.last_seq[client], m, 1))
            await memory.commit()
            if rng.random() < 0.7:
                pending.append(sqlite.commit())  # not awaited: it may wait for space
            await asyncio.sleep(0)
            for client in CLIENTS:
                after = rng.randint(0, scenario.last_seq[client])
                limit = rng.randint(1, 6)
                full_reads += sqlite.full
                got = await asyncio.wait_for(sqlite.read_queue(client, after, limit), 10)
                expected = await memory.read_queue(client, after, limit)
                assert [(e.seq, message_shape(e.message), e.qos, e.retain, e.subscription_ids,
                         e.state, e.packet_id) for e in got] == [
                    (e.seq, message_shape(e.message), e.qos, e.retain, e.subscription_ids,
                     e.state, e.packet_id) for e in expected], f"round {round_}, {client}"
            if round_ % 15 == 14:  # space comes back for a moment
                await limit_growth(sqlite, 1_073_741_823)
                await asyncio.wait_for(asyncio.gather(*pending), 10)
                pending.clear()
                assert not sqlite.full
                await limit_growth(sqlite, None)
        await limit_growth(sqlite, 1_073_741_823)
        await asyncio.wait_for(asyncio.gather(*pending), 10)
        assert await snapshot(sqlite) == await snapshot(memory)
        assert full_reads > 0  # the out-of-space path was taken
    finally:
        await limit_growth(sqlite, 1_073_741_823)
        await sqlite.close()
        await memory.close()
