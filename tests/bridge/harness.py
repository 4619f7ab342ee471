"""What the bridge tests share: a TCP proxy that can cut the uplink, gateway configuration,
publishers and a collector on the upstream, and the oracle that compares them.

The oracle is the local publishers' record of what the gateway acknowledged (PUBACK/PUBREC),
never the bridge's word: every acknowledged QoS 1/2 message must arrive at the upstream
subscriber, QoS 2 exactly once, and in the order each publisher sent them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

from fault.mqttclient import Publisher, Subscriber


class Proxy:
    """A TCP proxy between the gateway and the upstream: ``down()`` is an uplink outage.

    ``cut_every`` (bytes, from the gateway to the upstream) makes it drop each connection
    after a random amount of traffic in [cut_every/2, cut_every]: a flaky link that breaks
    mid-packet.
    """

    def __init__(self, target_host: str, target_port: int, cut_every: int = 0, seed: int = 1) -> None:
        self.target = (target_host, target_port)
        self.cut_every = cut_every
        self.rng = random.Random(seed)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.is_up = True
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.connections = 0
        self.cuts = 0

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.down()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def down(self) -> None:
        """Refuse new connections (accept and drop them) and cut the current ones."""
        self.is_up = False
        for client, upstream in list(self.pairs):
            for writer in (client, upstream):
                writer.transport.abort()
        self.pairs.clear()

    def up(self) -> None:
        self.is_up = True

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if not self.is_up:
            client_writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self.connections += 1
        pair = (client_writer, up_writer)
        self.pairs.add(pair)
        budget = self.rng.randint(self.cut_every // 2, self.cut_every) if self.cut_every else 0

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limited: bool) -> None:
            nonlocal budget
            try:
                while True:
                    data = await reader.read(4096)
                    if not data:
                        break
                    if limited and self.cut_every:
                        if len(data) >= budget:
                            writer.write(data[:budget])  # the cut falls inside a packet
                            self.cuts += 1
                            break
                        budget -= len(data)
                    writer.write(data)
            except OSError:
                pass
            for w in pair:
                w.transport.abort()

        try:
            await asyncio.gather(pump(client_reader, up_writer, True), pump(up_reader, client_writer, False))
        except asyncio.CancelledError:
            pass  # the event loop is closing: the connections go with it
        self.pairs.discard(pair)


def bridge_config(
    upstream_port: int,
    *,
    version: str = "3.1.1",
    extra: str = "",
    topics: str = "",
    qos: int = 2,
) -> str:
    """A gateway forwarding site/sensors/# as gw1/sensors/# and receiving gw1/cmd/# as site/cmd/#."""
    topics = topics or f"""
[[bridge.topic]]
pattern = "sensors/#"
direction = "out"
qos = {qos}
local_prefix = "site/"
remote_prefix = "gw1/"

[[bridge.topic]]
pattern = "cmd/#"
direction = "in"
qos = 1
local_prefix = "site/"
remote_prefix = "gw1/"
"""
    return f"""
[mqtt]
sys_interval = 1

[[bridge]]
name = "cloud"
address = "127.0.0.1:{upstream_port}"
protocol_version = "{version}"
client_id = "gateway-1"
keepalive = 5
restart_timeout = 1
{extra}
{topics}
"""


async def wait_until(condition: Callable[[], bool], timeout: float, what: str,
                     progress: Callable[[], object] | None = None) -> None:
    """Wait for ``condition``; while ``progress`` keeps changing the deadline moves (busy CI)."""
    deadline = time.monotonic() + timeout
    last = progress() if progress else None
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
        if progress is not None:
            now = progress()
            if now != last:
                last = now
                deadline = max(deadline, time.monotonic() + timeout)


async def wait_log(process: object, pattern: str, count: int = 1, timeout: float = 15) -> None:
    """Wait (without blocking the event loop: the proxy runs on it) for ``count`` matching lines."""
    import re

    def enough() -> bool:
        return len(re.findall(pattern, process.log(all_runs=True))) >= count  # type: ignore[attr-defined]

    await wait_until(enough, timeout, f"{count} log lines matching {pattern!r}")


class Collector:
    """The upstream subscriber, reconnecting whenever its broker comes back."""

    def __init__(self, subscriber: Subscriber, host: str, port_of: Callable[[], int]) -> None:
        self.subscriber = subscriber
        self.host = host
        self.port_of = port_of
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while not self.stop.is_set():
            await self.subscriber.run(self.host, self.port_of(), self.stop)
            if not self.stop.is_set():
                await asyncio.sleep(0.1)

    async def start(self) -> Collector:
        self.task = asyncio.ensure_future(self._loop())
        await wait_until(lambda: self.subscriber.subscribed, 10, "the upstream subscription")
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


async def publish(publishers: list[Publisher], port: int, count: int,
                  interrupt: Callable[[], Awaitable[None]] | None = None) -> None:
    """Each publisher sends ``count`` new messages and waits for their acknowledgements.

    With ``interrupt`` the phase ends when it returns (it kills the gateway, say); the
    publishers keep what is unacknowledged and re-send it on their next connection.
    """
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(p.run("127.0.0.1", port, count, 0.002, stop)) for p in publishers]
    if interrupt is not None:
        await interrupt()
    else:
        goal = {p.client_id: p.seq + count for p in publishers}

        def finished() -> bool:
            return all(p.seq >= goal[p.client_id] and p.done for p in publishers)

        await wait_until(finished, 30, "the gateway's acknowledgements",
                         lambda: sum(len(p.acknowledged) for p in publishers))
    stop.set()
    await asyncio.gather(*tasks)


async def reconnect_publishers(publishers: list[Publisher], port: int) -> None:
    """Re-send what is unacknowledged after a crash of the gateway."""
    await publish(publishers, port, 0)


def delivery_report(publishers: list[Publisher], subscriber: Subscriber) -> dict[str, object]:
    """Compare what the gateway acknowledged with what arrived upstream.

    Order is checked per publisher and QoS level (MQTT orders messages within one QoS only),
    in the order the upstream took the messages in: the packet ids it gave them towards the
    subscriber, connection by connection. Arrival order would also count the upstream's own
    shuffling: mosquitto 2.0.11 sometimes delivers a message with packet id n+1 before n.
    """
    arrived = Counter(d.msg_id for d in subscriber.deliveries)
    acknowledged = {m: qos for p in publishers for m, (_, qos) in p.acknowledged.items()}
    missing = sorted(m for m in acknowledged if m not in arrived)
    duplicated = sorted(m for m, qos in acknowledged.items() if qos == 2 and arrived[m] > 1)
    first: dict[str, tuple[int, int, int]] = {}
    for index, delivery in enumerate(subscriber.deliveries):
        if delivery.msg_id in acknowledged and delivery.msg_id not in first:
            first[delivery.msg_id] = (delivery.connection, delivery.packet_id or 0, index)
    reordered = 0
    last: dict[tuple[str, int], int] = {}
    for msg_id in sorted(first, key=first.__getitem__):
        client, _, seq = msg_id.rpartition(":")
        stream = (client, acknowledged[msg_id])
        if int(seq) < last.get(stream, 0):
            reordered += 1
        last[stream] = max(last.get(stream, 0), int(seq))
    return {
        "acknowledged": len(acknowledged),
        "arrived": len([m for m in acknowledged if m in arrived]),
        "missing": missing,
        "qos2_duplicated": duplicated,
        "reordered": reordered,
        "duplicates": sum(arrived.values()) - len(arrived),
        "violations": subscriber.violations + [v for p in publishers for v in p.violations],
    }


def check_delivery(publishers: list[Publisher], subscriber: Subscriber) -> dict[str, object]:
    """Every acknowledged message arrived; QoS 2 once; first arrivals in each publisher's order."""
    report = delivery_report(publishers, subscriber)
    missing = report["missing"]
    duplicated = report["qos2_duplicated"]
    assert not missing, f"{len(missing)} acknowledged messages never arrived upstream: {missing[:10]}"  # type: ignore[arg-type, index]
    assert not duplicated, f"{len(duplicated)} QoS 2 messages arrived more than once: {duplicated[:10]}"  # type: ignore[arg-type, index]
    assert not report["reordered"], f"{report['reordered']} messages arrived out of their publisher's order"
    assert not report["violations"], report["violations"]
    return report


class Gateway(Protocol):
    """A gateway broker process: ours (``BrokerProcess``) or a mosquitto with a bridge."""

    port: int

    def kill(self) -> object: ...

    def restart(self) -> object: ...


async def outage_with_crashes(gateway: Gateway, proxy: Proxy, subscriber: Subscriber,
                              publishers: list[Publisher], scale: int = 1) -> None:
    """The outage scenario of issue 11: link up, link down while devices publish, kill -9 of
    the gateway during the outage, link back, kill -9 again while the backlog drains, then
    a clean drain. The caller compares the records (``delivery_report``)."""

    def arrived() -> int:
        return len(subscriber.deliveries)

    await publish(publishers, gateway.port, 40 * scale)  # link up
    await wait_until(lambda: arrived() >= 40 * scale * len(publishers), 30, "forwarding while the link is up",
                     arrived)
    proxy.down()
    await publish(publishers, gateway.port, 150 * scale)  # queued on the gateway
    gateway.kill()  # crash during the outage
    gateway.restart()
    await publish(publishers, gateway.port, 50 * scale)
    before_drain = arrived()
    proxy.up()

    async def crash_while_draining() -> None:
        await wait_until(lambda: arrived() > before_drain + 20 * scale, 30, "the drain to start")
        gateway.kill()

    await publish(publishers, gateway.port, 1000 * scale, crash_while_draining)
    gateway.restart()
    await reconnect_publishers(publishers, gateway.port)
    await publish(publishers, gateway.port, 20 * scale)
    total = sum(len(p.acknowledged) for p in publishers)
    try:
        await wait_until(lambda: len({d.msg_id for d in subscriber.deliveries}) >= total, 30,
                         "the backlog to drain", arrived)
    except AssertionError:
        pass  # the report says what is missing
