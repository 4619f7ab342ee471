"""Raw asyncio MQTT clients for the fault tests, with exact client-side semantics.

Built on the broker's own codec (``broker.protocol.codec``) so the bytes are
right, but every decision a client makes is here and visible: when a message
counts as acknowledged, which packet ids are reused, what is re-sent with DUP
after a reconnect, when a QoS 2 message is handed to the application. paho
would hide exactly the parts these tests are about.

* ``Link``: one TCP connection; send packets, receive decoded ones, None at EOF.
* ``Subscriber``: a persistent session that survives any number of connections.
  QoS 2 receive is "method B" of the spec (4.3.3): the packet id is stored on
  PUBLISH and the message delivered once; a PUBLISH whose id is still awaiting
  PUBREL is answered with PUBREC but not delivered again; PUBREL forgets the id.
* ``Publisher``: a persistent session that publishes QoS 1/2 with unique ids in
  the payload, keeps its own record of what the broker acknowledged (PUBACK,
  PUBREC), and after a reconnect re-sends what is unacknowledged with DUP (and
  PUBREL for what was PUBREC'd), as the spec requires.

Anything a client sees that the broker must never do is recorded in
``violations`` (with the client id), so a test can report all of them at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field

from broker.protocol import properties as P
from broker.protocol.codec import PacketReader, encode
from broker.protocol.errors import MQTTError
from broker.protocol.packets import (
    MQTT_5,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
)

CONNECT_TIMEOUT = 5.0
PACKET_ID_NOT_FOUND = 0x92
SESSION_EXPIRY = 3600  # v5 persistent sessions: longer than any test


class Activity:
    """When any client last received a packet: lets a test tell 'done' from 'stuck'."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last


class Link:
    """One TCP connection speaking one protocol version."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int) -> None:
        self._reader = reader
        self._writer = writer
        self.version = version
        self._decoder = PacketReader(client_side=True, version=version)
        self._inbox: deque[Packet] = deque()
        self.closed = False

    @classmethod
    async def open(
        cls, host: str, port: int, connect: Connect, timeout: float = CONNECT_TIMEOUT,
        pipelined: tuple[Packet, ...] = (),
    ) -> tuple[Link, Connack] | None:
        """Connect and exchange CONNECT/CONNACK; None if the broker is not there (or died meanwhile).

        ``pipelined`` packets go in the same write as CONNECT, before the CONNACK is read,
        as fast clients and reconnect storms send them.
        """
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, asyncio.TimeoutError):
            return None
        link = cls(reader, writer, connect.protocol_level)
        link.send_bytes(b"".join(encode(p, connect.protocol_level) for p in (connect, *pipelined)))
        packet = await link.recv(timeout)
        if packet is None:
            link.abort()
            return None
        if not isinstance(packet, Connack):
            link.abort()
            raise AssertionError(f"expected CONNACK, got {packet!r}")
        return link, packet

    def send(self, packet: Packet) -> None:
        self.send_bytes(encode(packet, self.version))

    def send_bytes(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._writer.write(data)
        except (OSError, RuntimeError):
            self.closed = True

    async def recv(self, timeout: float | None = None) -> Packet | None:
        """The next packet; None at EOF or reset (and on timeout, if one is given)."""
        while not self._inbox:
            if self.closed:
                return None
            try:
                if timeout is None:
                    data = await self._reader.read(65536)
                else:
                    data = await asyncio.wait_for(self._reader.read(65536), timeout)
            except asyncio.TimeoutError:
                return None
            except OSError:
                data = b""
            if not data:
                self.abort()
                return None
            try:
                self._inbox.extend(self._decoder.feed(data))
            except MQTTError as exc:
                self.abort()
                raise AssertionError(f"the broker sent a malformed stream: {exc}") from exc
        return self._inbox.popleft()

    def abort(self) -> None:
        self.closed = True
        try:
            self._writer.transport.abort()
        except (OSError, RuntimeError):
            pass

    async def disconnect(self) -> None:
        """Send DISCONNECT (session kept: expiry comes from CONNECT) and close."""
        if not self.closed:
            self.send(Disconnect())
            try:
                await asyncio.wait_for(self._writer.drain(), 2.0)
            except (OSError, asyncio.TimeoutError):
                pass
        self.abort()


def connect_packet(client_id: str, version: int, session_expiry: int = SESSION_EXPIRY,
                   receive_maximum: int | None = None) -> Connect:
    """CONNECT for a persistent session: clean session 0 (v3.1.1), or clean start 0 + expiry (v5)."""
    props: dict = {}
    if version == MQTT_5:
        props[P.SESSION_EXPIRY_INTERVAL] = session_expiry
        if receive_maximum is not None:
            props[P.RECEIVE_MAXIMUM] = receive_maximum
    return Connect(client_id, protocol_level=version, clean_start=False, keepalive=0, properties=props)


def payload_id(payload: bytes) -> str:
    """The unique message id a Publisher put at the start of the payload."""
    return payload.split(b"|", 1)[0].decode()


# ---------------------------------------------------------------------------- subscriber


@dataclass
class Delivery:
    """One message handed to the subscriber's application."""

    msg_id: str
    topic: str
    qos: int
    dup: bool
    packet_id: int | None
    connection: int  # which connection of this subscriber (1 = first)


class Subscriber:
    """A persistent subscriber session across connections, with exact QoS 1/2 receive rules."""

    def __init__(
        self,
        client_id: str,
        version: int,
        filters: list[tuple[str, int]],
        receive_maximum: int | None = None,
        session_expiry: int = SESSION_EXPIRY,
        activity: Activity | None = None,
    ) -> None:
        self.client_id = client_id
        self.version = version
        self.filters = filters
        self.receive_maximum = receive_maximum
        self.session_expiry = session_expiry
        self.activity = activity or Activity()
        self.subscribed = False  # SUBACK received: the subscriptions are durable
        self.session_exists = False  # a CONNACK was received: the broker has the session
        self.awaiting_pubrel: dict[int, str] = {}  # packet id -> message id (PUBREC sent)
        self.deliveries: list[Delivery] = []
        self.connections = 0
        self.violations: list[str] = []
        self.link: Link | None = None
        # Messages this subscriber publishes itself (QoS 1, see ``connect``).
        self.own_seq = 0
        self.own_outstanding: dict[int, tuple[str, bytes, int]] = {}  # packet id -> topic, payload, qos
        self.own_acknowledged: dict[str, str] = {}  # message id -> topic

    def violation(self, text: str) -> None:
        self.violations.append(f"{self.client_id}: {text}")

    async def connect(self, host: str, port: int, publish: tuple[str, int] | None = None) -> bool:
        """Open a connection, check session present, subscribe if not done yet.

        ``publish`` = (topic, qos): also publish one message of our own in the same write as
        CONNECT, and re-send (DUP) those not acknowledged yet; ``own_acknowledged`` records
        the acknowledged ones.
        """
        pipelined: list[Packet] = [
            Publish(topic, payload, qos, False, True, pid, {}) for pid, (topic, payload, qos) in self.own_outstanding.items()
        ]
        if publish is not None:
            self.own_seq += 1
            msg_id = f"{self.client_id}:own{self.own_seq}"
            payload = f"{msg_id}|{publish[0]}|".encode()
            pid = self.own_seq % 65535 + 1
            self.own_outstanding[pid] = (publish[0], payload, publish[1])
            pipelined.append(Publish(publish[0], payload, publish[1], False, False, pid, {}))
        opened = await Link.open(host, port, connect_packet(
            self.client_id, self.version, self.session_expiry, self.receive_maximum), pipelined=tuple(pipelined))
        if opened is None:
            return False
        link, connack = opened
        if connack.reason_code != 0:
            link.abort()
            self.violation(f"CONNACK refused with {connack.reason_code:#x}")
            return False
        self.connections += 1
        if self.session_exists and not connack.session_present:
            self.violation(
                f"session lost: CONNACK session present 0 on connection {self.connections} "
                f"(awaiting PUBREL: {sorted(self.awaiting_pubrel)})"
            )
            # The spec says the client must discard its session state then.
            self.awaiting_pubrel.clear()
            self.subscribed = False
        self.session_exists = True
        self.link = link
        if not self.subscribed:
            link.send(Subscribe(1, [(f, SubscriptionOptions(qos=q)) for f, q in self.filters]))
        return True

    async def run(self, host: str, port: int, stop: asyncio.Event) -> None:
        """One connection: receive until the broker goes away or ``stop`` is set (then DISCONNECT)."""
        if not await self.connect(host, port):
            return
        link = self.link
        assert link is not None
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                receiver = asyncio.ensure_future(link.recv())
                done, _ = await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if receiver not in done:
                    receiver.cancel()
                    await link.disconnect()
                    return
                packet = receiver.result()
                if packet is None:
                    return
                self.handle(link, packet)
        finally:
            stopper.cancel()
            link.abort()
            self.link = None

    def handle(self, link: Link, packet: Packet) -> None:
        self.activity.touch()
        if isinstance(packet, Publish):
            self.on_publish(link, packet)
        elif isinstance(packet, Pubrel):
            if self.awaiting_pubrel.pop(packet.packet_id, None) is None:
                # Legitimate after a crash: our PUBCOMP may not have been made durable.
                link.send(Pubcomp(packet.packet_id, PACKET_ID_NOT_FOUND if self.version == MQTT_5 else 0))
            else:
                link.send(Pubcomp(packet.packet_id))
        elif isinstance(packet, Suback):
            granted = [q for _, q in self.filters]
            if list(packet.reason_codes) != granted:
                self.violation(f"SUBACK {packet.reason_codes}, expected {granted}")
            self.subscribed = True
        elif isinstance(packet, Puback) and packet.packet_id in self.own_outstanding:
            topic, payload, _ = self.own_outstanding.pop(packet.packet_id)
            self.own_acknowledged[payload_id(payload)] = topic
        elif isinstance(packet, Disconnect):
            link.abort()
        else:
            self.violation(f"unexpected packet {packet!r}")

    def on_publish(self, link: Link, packet: Publish) -> None:
        msg_id = payload_id(packet.payload)
        if packet.qos == 2:
            pid = packet.packet_id
            assert pid is not None
            known = self.awaiting_pubrel.get(pid)
            if known is None:
                self.awaiting_pubrel[pid] = msg_id
                self.deliver(packet, msg_id)
            elif known != msg_id:
                # The broker reused a packet id before releasing it: by the rules this
                # PUBLISH is a re-send, so this message is lost for the application.
                self.violation(
                    f"packet id {pid} reused for {msg_id} while {known} still awaits PUBREL "
                    f"(dup={packet.dup}); {msg_id} is lost to the application"
                )
            link.send(Pubrec(pid))
            return
        self.deliver(packet, msg_id)
        if packet.qos == 1:
            assert packet.packet_id is not None
            link.send(Puback(packet.packet_id))

    def deliver(self, packet: Publish, msg_id: str) -> None:
        self.deliveries.append(
            Delivery(msg_id, packet.topic, packet.qos, packet.dup, packet.packet_id, self.connections)
        )


# ----------------------------------------------------------------------------- publisher

WAIT_ACK = 0  # PUBLISH sent, PUBACK/PUBREC awaited
WAIT_COMP = 1  # PUBREL sent, PUBCOMP awaited


@dataclass
class Outgoing:
    msg_id: str
    topic: str
    qos: int
    payload: bytes
    properties: dict = field(default_factory=dict)
    state: int = WAIT_ACK


class Publisher:
    """A persistent publisher session across connections, keeping a record of acknowledgements."""

    def __init__(
        self,
        client_id: str,
        version: int,
        topics: list[tuple[str, int]],
        rng: random.Random,
        window: int = 10,
        reuse_lowest_packet_id: bool = False,
        payload_size: int = 48,
        activity: Activity | None = None,
    ) -> None:
        self.client_id = client_id
        self.version = version
        self.topics = topics  # (topic, qos) to pick from at random
        self.rng = rng
        self.window = window
        # Reusing the lowest free id exercises the broker's inbound QoS 2 state:
        # an id is reused right after PUBCOMP, as small clients commonly do.
        self.reuse_lowest_packet_id = reuse_lowest_packet_id
        self.payload_size = payload_size
        self.activity = activity or Activity()
        self.seq = 0
        self.next_pid = 1
        self.outstanding: dict[int, Outgoing] = {}  # packet id -> message, in send order
        self.acknowledged: dict[str, tuple[str, int]] = {}  # msg id -> (topic, qos): the record
        self.published: dict[str, tuple[str, int]] = {}  # every message ever sent
        self.session_exists = False
        self.connections = 0
        self.violations: list[str] = []
        self._room = asyncio.Event()
        self.link: Link | None = None

    def violation(self, text: str) -> None:
        self.violations.append(f"{self.client_id}: {text}")

    @property
    def done(self) -> bool:
        return not self.outstanding

    def _allocate_pid(self) -> int:
        if self.reuse_lowest_packet_id:
            pid = 1
            while pid in self.outstanding:
                pid += 1
            return pid
        pid = self.next_pid
        while pid in self.outstanding:
            pid = pid % 65535 + 1
        self.next_pid = pid % 65535 + 1
        return pid

    def _new_message(self) -> Outgoing:
        topic, qos = self.rng.choice(self.topics)
        self.seq += 1
        msg_id = f"{self.client_id}:{self.seq}"
        head = f"{msg_id}|{topic}|".encode()
        payload = head + b"x" * max(0, self.payload_size - len(head))
        self.published[msg_id] = (topic, qos)
        return Outgoing(msg_id, topic, qos, payload)

    def _send_publish(self, link: Link, pid: int, out: Outgoing, dup: bool) -> None:
        link.send(Publish(out.topic, out.payload, out.qos, False, dup, pid, dict(out.properties)))

    async def connect(self, host: str, port: int) -> Link | None:
        opened = await Link.open(host, port, connect_packet(self.client_id, self.version))
        if opened is None:
            return None
        link, connack = opened
        if connack.reason_code != 0:
            link.abort()
            self.violation(f"CONNACK refused with {connack.reason_code:#x}")
            return None
        self.connections += 1
        if self.session_exists and not connack.session_present:
            self.violation(f"session lost: CONNACK session present 0 on connection {self.connections}")
        self.session_exists = True
        limit = connack.properties.get(P.RECEIVE_MAXIMUM, 65535) if self.version == MQTT_5 else 65535
        self.window = min(self.window, limit)
        # Re-send, in the original order, what the broker has not acknowledged yet.
        for pid, out in self.outstanding.items():
            if out.state == WAIT_ACK:
                self._send_publish(link, pid, out, dup=True)
            else:
                link.send(Pubrel(pid))
        self.link = link
        return link

    async def run(
        self,
        host: str,
        port: int,
        budget: int,
        pace: float,
        stop: asyncio.Event,
        publish: dict | None = None,
    ) -> int:
        """One connection: re-send, publish up to ``budget`` new messages (``pace`` s apart at
        most, random), keep handling acknowledgements until the link drops or ``stop`` is set.

        Returns how many new messages were sent.
        """
        link = await self.connect(host, port)
        if link is None:
            return 0
        reader = asyncio.ensure_future(self._read_loop(link))
        sent = 0
        try:
            while sent < budget and not link.closed and not stop.is_set():
                if len(self.outstanding) >= self.window:
                    self._room.clear()
                    waiter = asyncio.ensure_future(self._room.wait())
                    await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    continue
                out = self._new_message()
                if publish:
                    out.properties.update(publish)
                pid = self._allocate_pid()
                self.outstanding[pid] = out
                self._send_publish(link, pid, out, dup=False)
                sent += 1
                if pace:
                    await asyncio.sleep(self.rng.uniform(0, pace))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
        finally:
            if not reader.done():
                await link.disconnect()
                reader.cancel()
            link.abort()
            self.link = None
        return sent

    async def _read_loop(self, link: Link) -> None:
        while True:
            packet = await link.recv()
            if packet is None:
                self._room.set()
                return
            self.activity.touch()
            self.handle(link, packet)

    def handle(self, link: Link, packet: Packet) -> None:
        if isinstance(packet, (Puback, Pubrec, Pubcomp)):
            pid = packet.packet_id
            out = self.outstanding.get(pid)
            kind = type(packet).__name__.upper()
            if out is None:
                # Each PUBLISH (re-)sent on a connection gets exactly one answer, so an
                # answer for an id we are not waiting on is a broker bug.
                self.violation(f"{kind} for packet id {pid}, which is not in flight")
                if isinstance(packet, Pubrec):
                    link.send(Pubrel(pid, PACKET_ID_NOT_FOUND if self.version == MQTT_5 else 0))
                return
            expected = {Puback: (1, WAIT_ACK), Pubrec: (2, WAIT_ACK), Pubcomp: (2, WAIT_COMP)}[type(packet)]
            if (out.qos, out.state) != expected:
                self.violation(f"{kind} for packet id {pid} of {out.msg_id} (QoS {out.qos}, state {out.state})")
                return
            if packet.reason_code >= 0x80 and not isinstance(packet, Pubcomp):
                # (PUBCOMP 0x92 "packet id not found" is legitimate: the broker completed the
                # PUBREL but the PUBCOMP was lost with the connection. The message was accepted
                # with PUBREC already, so the flow is finished either way.)
                self.violation(f"{kind} refused {out.msg_id} with {packet.reason_code:#x}")
                del self.outstanding[pid]
                self._room.set()
                return
            if isinstance(packet, Puback):
                self.acknowledged[out.msg_id] = (out.topic, out.qos)
                del self.outstanding[pid]
                self._room.set()
            elif isinstance(packet, Pubrec):
                self.acknowledged[out.msg_id] = (out.topic, out.qos)
                out.state = WAIT_COMP
                link.send(Pubrel(pid))
            else:
                del self.outstanding[pid]
                self._room.set()
        elif isinstance(packet, Disconnect):
            link.abort()
        else:
            self.violation(f"unexpected packet {packet!r}")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """The MQTT matching rule (kept here so the oracle does not share code with the broker)."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
