"""Offline queues: limits by count and bytes, the drop policy, message expiry, session expiry.

Every case is also checked across a restart where it matters (SIGTERM and
kill -9): the queue counters, expiry times and expired sessions must come
back from disk exactly as they were. Clients are raw sockets on the broker's
codec (``mqttclient.Link``) so each packet is visible.

The queue limits count what waits beyond the in-flight window
(``[limits] max_queued_messages`` / ``max_queued_bytes``, payload bytes);
``queue_full_policy = "drop_new"`` keeps the oldest messages, ``"drop_oldest"``
the newest. Either way the publisher is acknowledged: the limit is a
documented loss, not an error.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from broker.protocol import properties as P
from broker.protocol.packets import (
    MQTT_3_1_1,
    MQTT_5,
    Connack,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
)

from .mqttclient import Link, connect_packet

VERSIONS = [pytest.param(MQTT_3_1_1, id="v311"), pytest.param(MQTT_5, id="v5")]
POLICIES = ["drop_new", "drop_oldest"]
NO_MATCHING_SUBSCRIBERS = 0x10


def limits(policy: str, **keys: object) -> str:
    lines = [f'queue_full_policy = "{policy}"'] + [f"{k} = {v!r}" for k, v in keys.items()]
    return "[limits]\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- helpers


async def session(broker, client_id: str, version: int, expiry: int = 3600, clean: bool = False,
                  receive_maximum: int | None = None) -> tuple[Link, Connack]:
    connect = connect_packet(client_id, version, expiry, receive_maximum)
    connect.clean_start = clean
    opened = await Link.open(broker.host, broker.port, connect)
    assert opened is not None, f"{client_id} could not connect to {broker!r}"
    link, connack = opened
    assert connack.reason_code == 0, connack
    return link, connack


async def subscribe(link: Link, topic_filter: str, qos: int) -> None:
    link.send(Subscribe(1, [(topic_filter, SubscriptionOptions(qos=qos))]))
    ack = await link.recv(5)
    assert isinstance(ack, Suback) and list(ack.reason_codes) == [qos], ack


async def subscribe_and_leave(broker, client_id: str, version: int, topic_filter: str, qos: int = 1,
                              expiry: int = 3600) -> None:
    """A persistent session with one subscription, then offline.

    v5 starts clean (clean start 1 with an expiry is persistent); v3.1.1 must say clean session 0.
    """
    link, _ = await session(broker, client_id, version, expiry, clean=version == MQTT_5)
    await subscribe(link, topic_filter, qos)
    await link.disconnect()


async def publish(broker, client_id: str, version: int, messages: list) -> list[int]:
    """Publish (topic, payload, qos[, properties]) one after the other, each flow completed.

    Returns the reason code the broker acknowledged each with (PUBACK / PUBREC).
    """
    link, _ = await session(broker, client_id, version, clean=True, expiry=0)
    codes = []
    for pid, message in enumerate(messages, start=1):
        topic, payload, qos, *rest = message
        link.send(Publish(topic, payload, qos, False, False, pid, dict(rest[0]) if rest else {}))
        ack = await link.recv(5)
        if qos == 1:
            assert isinstance(ack, Puback) and ack.packet_id == pid, ack
        else:
            assert isinstance(ack, Pubrec) and ack.packet_id == pid, ack
            link.send(Pubrel(pid))
            done = await link.recv(5)
            assert isinstance(done, Pubcomp) and done.packet_id == pid, done
        codes.append(ack.reason_code)
    await link.disconnect()
    return codes


async def drain(link: Link, quiet: float = 0.8, ack: bool = True) -> list[Publish]:
    """Everything the broker sends until it is quiet for ``quiet`` s; QoS 1/2 acknowledged."""
    got: list[Publish] = []
    while True:
        packet = await link.recv(quiet)
        if packet is None:
            return got
        if isinstance(packet, Publish):
            got.append(packet)
            assert packet.qos == 0 or packet.packet_id is not None
            if ack and packet.qos == 1:
                link.send(Puback(packet.packet_id))  # type: ignore[arg-type]
            elif ack and packet.qos == 2:
                link.send(Pubrec(packet.packet_id))  # type: ignore[arg-type]
        elif isinstance(packet, Pubrel):
            link.send(Pubcomp(packet.packet_id))
        else:
            raise AssertionError(f"unexpected {packet!r}")


async def receive_all(broker, client_id: str, version: int, expiry: int = 3600, **kw) -> tuple[Connack, list[Publish]]:
    link, connack = await session(broker, client_id, version, expiry, **kw)
    got = await drain(link)
    await link.disconnect()
    return connack, got


def payloads(packets: list[Publish]) -> list[bytes]:
    return [p.payload for p in packets]


def numbered(prefix: str, numbers, size: int = 0) -> list[bytes]:
    return [f"{prefix}{i}".encode().ljust(size, b".") for i in numbers]


def stored_rows(data_dir: Path, client_id: str) -> dict[str, int]:
    """Rows the stopped broker left on disk for a client (and messages overall).

    White-box on purpose: "the queue is gone" must mean gone from the disk too,
    not only invisible to the client.
    """
    db = sqlite3.connect(f"file:{data_dir / 'broker.db'}?mode=ro", uri=True)
    try:
        rows = {
            table: db.execute(f"SELECT COUNT(*) FROM {table} WHERE client_id = ?", (client_id,)).fetchone()[0]
            for table in ("sessions", "subscriptions", "queue")
        }
        rows["messages (all clients)"] = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        return rows
    finally:
        db.close()


# ------------------------------------------------------------------------ count limit


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("policy", POLICIES)
def test_count_limit_offline(broker_factory, policy, version):
    broker = broker_factory(config=limits(policy, max_queued_messages=10))

    async def main():
        await subscribe_and_leave(broker, "sub", version, "q/t", qos=1)
        codes = await publish(broker, "pub", MQTT_5, [("q/t", p, 1) for p in numbered("m", range(25))])
        assert codes == [0] * 25, "a full queue is no reason to refuse the publisher"
        connack, got = await receive_all(broker, "sub", version)
        assert connack.session_present
        keep = range(10) if policy == "drop_new" else range(15, 25)
        assert payloads(got) == numbered("m", keep)

    asyncio.run(main())


@pytest.mark.parametrize("policy", POLICIES)
def test_count_limit_counts_beyond_the_inflight_window(broker_factory, policy):
    """Online but not acknowledging: 5 in flight (Receive Maximum), 10 queued, the rest dropped.

    The publisher is first held back (backpressure); once the subscriber has acknowledged
    nothing for stalled_subscriber_timeout it counts as stopped and its queue limit drops.
    Messages already sent cannot be taken back, so drop_oldest drops among the queued only.
    """
    broker = broker_factory(config=limits(policy, max_queued_messages=10, stalled_subscriber_timeout=1))

    async def main():
        sub, _ = await session(broker, "sub", MQTT_5, receive_maximum=5, clean=True)
        await subscribe(sub, "q/t", 1)
        await publish(broker, "pub", MQTT_5, [("q/t", p, 1) for p in numbered("m", range(30))])
        first = await drain(sub, ack=False)
        assert payloads(first) == numbered("m", range(5))
        for packet in first:
            sub.send(Puback(packet.packet_id))
        rest = await drain(sub)
        await sub.disconnect()
        keep = range(5, 15) if policy == "drop_new" else range(20, 30)
        assert payloads(rest) == numbered("m", keep)

    asyncio.run(main())


# ------------------------------------------------------------------------ bytes limit


@pytest.mark.parametrize("policy", POLICIES)
def test_bytes_limit_offline(broker_factory, policy):
    broker = broker_factory(config=limits(policy, max_queued_bytes=1050))

    async def main():
        await subscribe_and_leave(broker, "sub", MQTT_5, "q/t", qos=1)
        await publish(broker, "pub", MQTT_5, [("q/t", p, 1) for p in numbered("m", range(25), size=100)])
        _, got = await receive_all(broker, "sub", MQTT_5)
        keep = range(10) if policy == "drop_new" else range(15, 25)
        assert payloads(got) == numbered("m", keep, size=100)

    asyncio.run(main())


@pytest.mark.parametrize("policy", POLICIES)
def test_bytes_limit_with_a_larger_message(broker_factory, policy):
    """10 x 100 bytes fill 1000 of 1050; a 250-byte message needs two of them to go (drop_oldest:
    800 + 250 = 1050), or is itself dropped (drop_new). Either way the queue stays within its bytes."""
    broker = broker_factory(config=limits(policy, max_queued_bytes=1050))

    async def main():
        await subscribe_and_leave(broker, "sub", MQTT_5, "q/t", qos=1)
        small = numbered("m", range(10), size=100)
        big = b"big".ljust(250, b"!")
        await publish(broker, "pub", MQTT_5, [("q/t", p, 1) for p in small + [big]])
        _, got = await receive_all(broker, "sub", MQTT_5)
        if policy == "drop_new":
            assert payloads(got) == small
        else:
            assert payloads(got) == small[2:] + [big]
        assert sum(len(p.payload) for p in got) <= 1050

    asyncio.run(main())


BYTE_CASES = {
    # name: (sizes already queued, size of the new message); the limit is 1000 bytes
    "large-oldest": ([500, 50, 50, 50, 50, 50], 400),  # dropping the 500 is enough
    "small-oldest": ([10] * 9 + [900], 50),  # four 10s must go: 950 + 50 = 1000
}


@pytest.mark.parametrize("case", list(BYTE_CASES))
@pytest.mark.parametrize("policy", POLICIES)
def test_bytes_limit_is_exact_with_mixed_sizes(broker_factory, policy, case):
    """The byte count must be exact, not estimated: an estimate drops messages that fit
    (large oldest) or lets the queue grow past its limit (small oldest)."""
    sizes, new_size = BYTE_CASES[case]
    broker = broker_factory(config=limits(policy, max_queued_bytes=1000))

    async def main():
        await subscribe_and_leave(broker, "sub", MQTT_5, "q/t", qos=1)
        old = [f"a{i}".encode().ljust(size, b".") for i, size in enumerate(sizes)]
        new = b"new".ljust(new_size, b"!")
        await publish(broker, "pub", MQTT_5, [("q/t", p, 1) for p in old + [new]])
        _, got = await receive_all(broker, "sub", MQTT_5)
        if policy == "drop_new":
            expected = old
        else:
            keep = len(old)
            while sum(map(len, old[len(old) - keep:])) + new_size > 1000:
                keep -= 1
            expected = old[len(old) - keep:] + [new]
        assert [p[:3] for p in payloads(got)] == [p[:3] for p in expected]
        assert sum(len(p.payload) for p in got) <= 1000

    asyncio.run(main())


# ------------------------------------------------------------------- limits across restarts


@pytest.mark.parametrize("how", ["kill", "term"])
@pytest.mark.parametrize("policy", POLICIES)
def test_limits_hold_across_restart(broker_factory, policy, how):
    """6 queued, restart, 10 more: the counters must come back from disk (limit 10 messages, 1000 bytes)."""
    broker = broker_factory(config=limits(policy, max_queued_messages=10, max_queued_bytes=1000))

    async def main():
        await subscribe_and_leave(broker, "sub", MQTT_3_1_1, "q/t", qos=1)
        await publish(broker, "pub", MQTT_5, [("q/t", p, 1) for p in numbered("a", range(6), size=100)])
        broker.kill() if how == "kill" else broker.stop()
        broker.start()
        await publish(broker, "pub", MQTT_5, [("q/t", p, 1) for p in numbered("b", range(10), size=100)])
        connack, got = await receive_all(broker, "sub", MQTT_3_1_1)
        assert connack.session_present
        if policy == "drop_new":
            expected = numbered("a", range(6), 100) + numbered("b", range(4), 100)
        else:
            expected = numbered("b", range(10), 100)
        assert payloads(got) == expected

    asyncio.run(main())


# --------------------------------------------------------------------------- message expiry


@pytest.mark.parametrize("version", VERSIONS)
def test_expired_messages_are_never_delivered(broker_factory, version):
    broker = broker_factory()

    async def main():
        await subscribe_and_leave(broker, "sub", version, "x/#", qos=2)
        published = time.monotonic()
        await publish(broker, "pub", MQTT_5, [
            ("x/a", b"short-1", 1, {P.MESSAGE_EXPIRY_INTERVAL: 1}),
            ("x/a", b"long", 1, {P.MESSAGE_EXPIRY_INTERVAL: 60}),
            ("x/b", b"short-2", 2, {P.MESSAGE_EXPIRY_INTERVAL: 1}),
            ("x/b", b"forever", 2),
            ("x/a", b"short-3", 1, {P.MESSAGE_EXPIRY_INTERVAL: 1}),
        ])
        await asyncio.sleep(max(0.0, published + 2.2 - time.monotonic()))
        _, got = await receive_all(broker, "sub", version)
        assert payloads(got) == [b"long", b"forever"]
        if version == MQTT_5:
            long, forever = got
            # The interval forwarded is what is left of it (MQTT 5 s3.3.2.3.3).
            assert 1 <= long.properties[P.MESSAGE_EXPIRY_INTERVAL] <= 58
            assert P.MESSAGE_EXPIRY_INTERVAL not in forever.properties

    asyncio.run(main())


@pytest.mark.parametrize("how", ["kill", "term"])
def test_message_expiry_across_restart(broker_factory, how):
    """Expiry is wall-clock time kept on disk: not reset by a restart, and counting while the
    broker is down."""
    broker = broker_factory()

    async def main():
        await subscribe_and_leave(broker, "sub", MQTT_5, "x/#", qos=1)
        published = time.monotonic()
        await publish(broker, "pub", MQTT_5, [
            ("x/a", b"expires-while-down", 1, {P.MESSAGE_EXPIRY_INTERVAL: 1}),
            ("x/a", b"expires-after-restart", 1, {P.MESSAGE_EXPIRY_INTERVAL: 3}),
            ("x/a", b"long", 1, {P.MESSAGE_EXPIRY_INTERVAL: 30}),
        ])
        broker.kill() if how == "kill" else broker.stop()
        await asyncio.sleep(max(0.0, published + 1.5 - time.monotonic()))
        broker.start()
        await asyncio.sleep(max(0.0, published + 3.5 - time.monotonic()))
        _, got = await receive_all(broker, "sub", MQTT_5)
        assert payloads(got) == [b"long"]
        left = got[0].properties[P.MESSAGE_EXPIRY_INTERVAL]
        assert 1 <= left <= 30 - 3, f"{left} s left of 30 s after more than 3.5 s"

    asyncio.run(main())


def test_expired_messages_do_not_take_queue_room(broker_factory):
    """A queue full of expired messages is empty: new messages must not be dropped for them
    (else a device offline longer than the expiry would only ever get dead messages' room)."""
    broker = broker_factory(config=limits("drop_new", max_queued_messages=5))

    async def main():
        await subscribe_and_leave(broker, "sub", MQTT_5, "x/#", qos=1)
        published = time.monotonic()
        await publish(broker, "pub", MQTT_5,
                      [("x/a", p, 1, {P.MESSAGE_EXPIRY_INTERVAL: 1}) for p in numbered("old", range(5))])
        await asyncio.sleep(max(0.0, published + 2.2 - time.monotonic()))
        await publish(broker, "pub", MQTT_5, [("x/a", p, 1) for p in numbered("new", range(5))])
        _, got = await receive_all(broker, "sub", MQTT_5)
        assert payloads(got) == numbered("new", range(5))

    asyncio.run(main())


# --------------------------------------------------------------------------- session expiry


@pytest.mark.parametrize("how", ["kill", "term"])
def test_session_expires_while_broker_is_down(broker_factory, how):
    """v5 session expiry 2 s: stop the broker, wait 3 s, start: the session and its queue are gone.

    A session with a longer expiry on the same broker is the control: it must survive.
    """
    broker = broker_factory()

    async def main():
        await subscribe_and_leave(broker, "short", MQTT_5, "s/t", qos=1, expiry=2)
        await subscribe_and_leave(broker, "long", MQTT_5, "s/t", qos=1, expiry=600)
        left = time.monotonic()
        await publish(broker, "pub", MQTT_5, [("s/t", p, 1) for p in numbered("m", range(3))])
        broker.kill() if how == "kill" else broker.stop()
        await asyncio.sleep(max(0.0, left + 3.0 - time.monotonic()))
        broker.start()
        broker.stop()
        assert stored_rows(broker.data_dir, "short") == {
            "sessions": 0, "subscriptions": 0, "queue": 0, "messages (all clients)": 3,  # long's copies
        }
        broker.start()
        connack, got = await receive_all(broker, "short", MQTT_5, expiry=60)
        assert not connack.session_present, "the session expired 1 s before the broker started again"
        assert got == []
        # Its subscription went with it: nobody matches s/t but "long", which is offline and persistent.
        connack, got = await receive_all(broker, "long", MQTT_5, expiry=600)
        assert connack.session_present
        assert payloads(got) == numbered("m", range(3))
        assert await publish(broker, "pub", MQTT_5, [("s/t", b"after", 1)]) == [0]
        connack, got = await receive_all(broker, "short", MQTT_5, expiry=60)
        assert connack.session_present and got == [], "the expired subscription came back"

    asyncio.run(main())


def test_session_expires_while_broker_runs_and_stays_gone_after_kill(broker_factory):
    """Expired while running (1 s): gone at once, and the removal is on disk before a kill -9."""
    broker = broker_factory()

    async def main():
        await subscribe_and_leave(broker, "short", MQTT_5, "s/t", qos=1, expiry=1)
        left = time.monotonic()
        await publish(broker, "pub", MQTT_5, [("s/t", p, 1) for p in numbered("m", range(3))])
        await asyncio.sleep(max(0.0, left + 2.5 - time.monotonic()))
        # No client may touch the session before the kill: expiry alone must remove it.
        assert await publish(broker, "pub", MQTT_5, [("s/t", b"late", 1)]) == [NO_MATCHING_SUBSCRIBERS]
        broker.kill()
        broker.start()
        broker.stop()
        assert stored_rows(broker.data_dir, "short") == {
            "sessions": 0, "subscriptions": 0, "queue": 0, "messages (all clients)": 0,
        }
        broker.start()
        connack, got = await receive_all(broker, "short", MQTT_5, expiry=60)
        assert not connack.session_present
        assert got == []

    asyncio.run(main())


@pytest.mark.parametrize("how", ["kill", "term"])
def test_unexpired_session_keeps_queue_across_restart(broker_factory, how):
    """The positive control of the expiry tests: expiry 30 s, restart after 1 s: all there."""
    broker = broker_factory()

    async def main():
        await subscribe_and_leave(broker, "sub", MQTT_5, "s/t", qos=2, expiry=30)
        await publish(broker, "pub", MQTT_5, [("s/t", p, 2) for p in numbered("m", range(5))])
        broker.kill() if how == "kill" else broker.stop()
        await asyncio.sleep(1.0)
        broker.start()
        connack, got = await receive_all(broker, "sub", MQTT_5, expiry=30)
        assert connack.session_present
        assert payloads(got) == numbered("m", range(5))

    asyncio.run(main())


def test_v311_connect_with_clean_session_discards_queue(broker_factory):
    """Clean session 1 ends the stored session and its queue (and it is gone from disk)."""
    broker = broker_factory()

    async def main():
        await subscribe_and_leave(broker, "sub", MQTT_3_1_1, "s/t", qos=1)
        await publish(broker, "pub", MQTT_5, [("s/t", p, 1) for p in numbered("m", range(3))])
        link, connack = await session(broker, "sub", MQTT_3_1_1, clean=True)
        assert not connack.session_present
        assert await drain(link) == []
        await link.disconnect()
        broker.stop()
        assert stored_rows(broker.data_dir, "sub") == {
            "sessions": 0, "subscriptions": 0, "queue": 0, "messages (all clients)": 0,
        }

    asyncio.run(main())

