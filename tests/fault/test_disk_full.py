"""A full disk must not stop the broker (issue 15, item 7).

The data directory is on a real small file system (a tmpfs with ``size=``),
partly taken by a filler file. One publisher of large QoS 1 messages to a
persistent subscriber fills it. The broker must stay up and:

* refuse new QoS 1/2 messages that need storage (v5: PUBACK 0x97 Quota
  exceeded; v3.1.1: the connection is closed), and say so once in its log;
* keep a canary flowing (QoS 1 between clean sessions: nothing to store) and
  deliver what is already stored, to a session online or reconnecting;
* never acknowledge what is not on disk: the message whose commit failed is
  acknowledged only once it is written, after space is freed;
* recover by itself when the filler file is deleted.

The same with a ``min_free_space`` reserve, which starts refusing before a
commit fails. Mounting needs root (CAP_SYS_ADMIN); elsewhere the tests skip.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.protocol.packets import (
    MQTT_3_1_1,
    MQTT_5,
    Connect,
    Puback,
    Publish,
    Suback,
    Subscribe,
    SubscriptionOptions,
)

from .mqttclient import Link, connect_packet

QUOTA_EXCEEDED = 0x97
# SQLite's WAL holds up to 1000 pages (4 MiB) before a checkpoint copies them into the
# database file, so recovering needs about twice the data's size free: the filler leaves
# 3 MiB to fill, and freeing it leaves room for the checkpoint.
DISK_SIZE = 12 * 1024 * 1024
FILLER_SIZE = 9 * 1024 * 1024
BIG = 200 * 1024  # payload of one large message
CANARY_INTERVAL = 0.1
MAX_CANARY_GAP = 1.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs with a 9 MiB filler file (``filler.bin``) in it."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        (mount_point / "filler.bin").write_bytes(os.urandom(FILLER_SIZE))
        yield mount_point
    finally:
        deadline = time.monotonic() + 10
        while subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:  # still busy: detach it, the kernel frees it later
                subprocess.run(["umount", "-l", str(mount_point)], check=True)
                break
            time.sleep(0.1)


# ---------------------------------------------------------------------------- clients


async def connect(broker, client_id: str, version: int = MQTT_5, persistent: bool = False) -> Link:
    if persistent:
        packet = connect_packet(client_id, version)
    else:
        packet = Connect(client_id, protocol_level=version, clean_start=True, keepalive=0)
    opened = await Link.open(broker.host, broker.port, packet)
    assert opened is not None, f"{client_id} could not connect"
    link, connack = opened
    assert connack.reason_code == 0, connack
    return link


async def subscribe(link: Link, topic_filter: str) -> None:
    link.send(Subscribe(1, [(topic_filter, SubscriptionOptions(qos=1))]))
    suback = await link.recv(10)
    assert isinstance(suback, Suback) and suback.reason_codes == [1], suback


async def expect(link: Link, kind: type, timeout: float = 10.0):
    packet = await link.recv(timeout)
    assert isinstance(packet, kind), f"expected {kind.__name__}, got {packet!r}"
    return packet


class Canary:
    """A QoS 1 message every 100 ms between two clean sessions; records the largest gap."""

    def __init__(self, publisher: Link, subscriber: Link) -> None:
        self.publisher = publisher
        self.subscriber = subscriber
        self.largest_gap = 0.0
        self.received = 0
        self.acked = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(self._publish(), self._receive())

    async def _publish(self) -> None:
        pid = 0
        while not self._stop.is_set():
            pid = pid % 65535 + 1
            self.publisher.send(Publish("canary/t", b"%d" % pid, 1, packet_id=pid))
            packet = await self.publisher.recv(5)
            assert isinstance(packet, Puback) and packet.reason_code == 0, f"canary: {packet!r}"
            self.acked += 1
            try:
                await asyncio.wait_for(self._stop.wait(), CANARY_INTERVAL)
            except asyncio.TimeoutError:
                pass

    async def _receive(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            packet = await self.subscriber.recv(0.5)
            now = time.monotonic()
            if isinstance(packet, Publish):
                self.received += 1
                self.subscriber.send(Puback(packet.packet_id))
                self.largest_gap = max(self.largest_gap, now - last)
                last = now
            else:
                assert packet is None and not self.subscriber.closed, f"canary subscriber: {packet!r}"

    def stop(self) -> None:
        self._stop.set()


class BigPublisher:
    """Publishes large QoS 1 messages, at most ``window`` unacknowledged, and keeps score."""

    def __init__(self, link: Link, window: int = 4) -> None:
        self.link = link
        self.window = window
        self.unacked: dict[int, bytes] = {}
        self.acked: list[bytes] = []  # payload tags the broker acknowledged with 0
        self.refused = 0
        self._next = 0

    def send_one(self) -> None:
        self._next += 1
        pid = self._next % 65535 + 1
        tag = b"big-%05d|" % self._next
        self.unacked[pid] = tag
        self.link.send(Publish("big/x", tag + b"B" * (BIG - len(tag)), 1, packet_id=pid))

    def on_ack(self, packet: Puback) -> None:
        tag = self.unacked.pop(packet.packet_id)
        if packet.reason_code == 0:
            self.acked.append(tag)
        else:
            assert packet.reason_code == QUOTA_EXCEEDED, packet
            self.refused += 1

    async def until_refused(self, timeout: float = 60.0) -> None:
        """Publish (one at a time) until the broker refuses one with 0x97."""
        deadline = time.monotonic() + timeout
        while not self.refused:
            while len(self.unacked) < self.window:
                self.send_one()
            packet = await self.link.recv(max(0.1, deadline - time.monotonic()))
            assert time.monotonic() < deadline, "the broker never refused a message"
            assert isinstance(packet, Puback), f"publisher: {packet!r}"
            self.on_ack(packet)

    async def until_stalled(self, broker, timeout: float = 60.0) -> None:
        """Publish until a commit fails for lack of space (the broker logs it).

        The messages of that commit stay unacknowledged, and so, in order (MQTT-4.6.0-2),
        does whatever this publisher sends after them.
        """
        deadline = time.monotonic() + timeout
        while "out of disk space" not in broker.log():
            assert time.monotonic() < deadline, "the disk never filled up"
            while len(self.unacked) < self.window:
                self.send_one()
            packet = await self.link.recv(0.2)
            if packet is not None:
                assert isinstance(packet, Puback), f"publisher: {packet!r}"
                self.on_ack(packet)

    async def drain(self, timeout: float = 15.0) -> None:
        """Wait for every outstanding acknowledgement."""
        deadline = time.monotonic() + timeout
        while self.unacked:
            packet = await self.link.recv(max(0.1, deadline - time.monotonic()))
            assert isinstance(packet, Puback), f"{len(self.unacked)} never acknowledged: {packet!r}"
            self.on_ack(packet)


async def receive_all(link: Link, count: int, timeout: float = 20.0) -> list[bytes]:
    """Receive ``count`` QoS 1 messages (acknowledging each); their payload tags."""
    tags = []
    deadline = time.monotonic() + timeout
    while len(tags) < count:
        packet = await link.recv(max(0.1, deadline - time.monotonic()))
        assert isinstance(packet, Publish), f"after {len(tags)} of {count}: {packet!r}"
        link.send(Puback(packet.packet_id))
        tags.append(packet.payload.split(b"|", 1)[0] + b"|")
    return tags


async def log_line(broker, pattern: str, timeout: float = 20.0) -> None:
    await asyncio.to_thread(broker.wait_for_log, pattern, timeout)


# ---------------------------------------------------------------------------- tests


@pytest.mark.serial  # its canary allows a gap of 1 s: other tests on the same cores would cause one
def test_a_full_disk_refuses_new_messages_keeps_serving_and_recovers(broker_factory, small_disk: Path) -> None:
    broker = broker_factory(data_dir=small_disk / "data")

    async def scenario() -> None:
        # A persistent session with messages stored before the disk fills up.
        reader = await connect(broker, "reader", persistent=True)
        await subscribe(reader, "stored/#")
        await reader.disconnect()
        early = await connect(broker, "early")
        for pid in (1, 2, 3):
            early.send(Publish("stored/x", b"stored-%d|" % pid, 1, packet_id=pid))
            assert (await expect(early, Puback)).reason_code == 0
        # The persistent subscriber whose queue will fill the disk.
        hoarder = await connect(broker, "hoarder", persistent=True)
        await subscribe(hoarder, "big/#")
        await hoarder.disconnect()
        canary_sub = await connect(broker, "canary-sub")
        await subscribe(canary_sub, "canary/#")
        canary = Canary(await connect(broker, "canary-pub"), canary_sub)
        canary_task = asyncio.ensure_future(canary.run())

        filler = BigPublisher(await connect(broker, "filler"))
        await filler.until_stalled(broker)
        while (packet := await filler.link.recv(1.0)) is not None:  # of commits that went through
            assert isinstance(packet, Puback), packet
            filler.on_ack(packet)
        assert not filler.link.closed
        assert filler.unacked, "the messages whose commit failed must not be acknowledged"
        stalled = dict(filler.unacked)

        # While full: new messages that need storage are refused at once.
        late = BigPublisher(await connect(broker, "late"), window=1)
        await late.until_refused(timeout=5)
        assert not late.acked
        small = await connect(broker, "small")
        small.send(Publish("big/x", b"small|", 1, packet_id=7))  # small, but it would be stored
        assert (await expect(small, Puback, 5)).reason_code == QUOTA_EXCEEDED
        small.send(Publish("nobody/x", b"x", 1, packet_id=8))  # nothing to store: accepted
        assert (await expect(small, Puback, 5)).reason_code != QUOTA_EXCEEDED
        # An MQTT 3.1.1 client cannot be told: it is disconnected.
        old = await connect(broker, "old-client", MQTT_3_1_1)
        old.send(Publish("big/x", b"v311|" + b"b" * 1000, 1, packet_id=1))
        assert await old.recv(10) is None and old.closed
        # What is stored is still delivered: a session reconnecting gets its queue.
        reader = await connect(broker, "reader", persistent=True)
        assert await receive_all(reader, 3) == [b"stored-1|", b"stored-2|", b"stored-3|"]
        await reader.disconnect()
        assert broker.running
        assert broker.log().count("out of disk space") == 1  # said once, not per message

        # Space comes back: the stalled commit goes through, then everything is accepted.
        (small_disk / "filler.bin").unlink()
        await log_line(broker, r"disk space available again")
        await filler.drain()
        # The messages of the failed commit were written and acknowledged after all; any
        # sent after the disk was full were refused (their 0x97 queued behind, in order).
        written = [tag for tag in stalled.values() if tag in filler.acked]
        assert written and filler.refused == len(stalled) - len(written)
        late.send_one()
        await late.drain()
        assert late.refused == 1 and len(late.acked) == 1, "still refused after space was freed"

        canary.stop()
        await canary_task
        assert canary.acked > 10 and canary.received > 10
        assert canary.largest_gap <= MAX_CANARY_GAP, f"canary gap {canary.largest_gap:.2f} s"

        # Nothing acknowledged is lost: the hoarder gets every acknowledged message.
        hoarder = await connect(broker, "hoarder", persistent=True)
        acknowledged = filler.acked + late.acked
        got = await receive_all(hoarder, len(acknowledged), timeout=30)
        assert sorted(got) == sorted(acknowledged)
        await hoarder.disconnect()

    asyncio.run(scenario())
    assert broker.stop() == 0
    assert "Traceback" not in broker.log()


def test_below_the_free_space_reserve_new_messages_are_refused_before_the_disk_is_full(
    broker_factory, small_disk: Path
) -> None:
    reserve = 1024 * 1024
    broker = broker_factory(data_dir=small_disk / "data", config=f"[storage]\nmin_free_space = {reserve}\n")

    async def scenario() -> None:
        hoarder = await connect(broker, "hoarder", persistent=True)
        await subscribe(hoarder, "big/#")
        await hoarder.disconnect()
        filler = BigPublisher(await connect(broker, "filler"), window=1)
        await filler.until_refused()
        await log_line(broker, r"below min_free_space")
        await filler.drain()  # no commit failed: everything sent before the refusal is acknowledged
        assert filler.acked and not filler.unacked
        # Deliveries and their acknowledgements still commit, in the reserve.
        hoarder = await connect(broker, "hoarder", persistent=True)
        got = await receive_all(hoarder, len(filler.acked))
        assert sorted(got) == sorted(filler.acked)
        await hoarder.disconnect()
        assert "out of disk space" not in broker.log()

        (small_disk / "filler.bin").unlink()
        await log_line(broker, r"bytes free again")
        filler.refused = 0
        filler.send_one()
        await filler.drain()
        assert filler.refused == 0 and filler.acked

    asyncio.run(scenario())
    assert broker.stop() == 0
    assert "Traceback" not in broker.log()
