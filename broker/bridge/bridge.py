"""A bridge to an upstream broker whose backlog is a persistent local session.

The bridge is a client of both brokers. Locally it is an ordinary core ``Connection``
(client id ``$bridge/<name>``, a session that never expires) whose transport is
``BridgeTransport``: what the core writes to it (PUBLISH, PUBREL, acknowledgements) the
bridge decodes and sends upstream, and what the upstream answers goes back into the
local connection as if a client had sent it. So the local session's queue, kept in
SQLite, is the store-and-forward backlog, with every guarantee a persistent session has:

* A message leaves the local queue only when the upstream acknowledged it: the upstream's
  PUBACK/PUBCOMP is fed to the local session, which deletes the entry then.
* QoS 2 is exactly once across restarts of either side: the local session re-sends
  PUBLISH (DUP) or PUBREL with the packet id it stored, the upstream session is
  persistent, so the upstream recognises the id.
* Order: one session, one queue; after a reconnect the in-flight ones are re-sent first,
  then the queue, and new messages queue behind it.
* The in-flight window is the upstream's Receive Maximum (v5) or ``max_inflight``
  (3.1.1, which cannot say it); ``max_rate`` paces what goes up beyond that.

While the upstream is away the local connection is closed, so the session is offline
and queues on disk, bounded by ``backlog_max_bytes`` with its own drop policy.

Inbound (``in``/``both``): messages from the upstream are fed to the local connection as
PUBLISH from the bridge, so they are routed and stored under the local durability rules,
and the upstream gets PUBACK/PUBREC only when the local broker sent its own (after its
commit). The packet id is kept, so a re-sent QoS 2 message is recognised locally too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import Any

from broker.bridge.config import NEVER_EXPIRES, BridgeConfig, TopicConfig
from broker.bridge.link import LinkFailure, UpstreamLink, open_link
from broker.bridge.pacing import Pacer
from broker.core.connection import Connection
from broker.core.engine import Engine
from broker.core.queuelimits import QueueLimits
from broker.core.transport import ListenerInfo
from broker.protocol import properties as P
from broker.protocol.codec import PacketReader, encode, encode_publish
from broker.protocol.errors import MQTTError
from broker.protocol.packets import (
    MQTT_5,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
)
from broker.protocol.topics import topic_matches
from broker.message import Message

log = logging.getLogger("broker")

LOCAL_VERSION = MQTT_5  # the local side speaks v5: reason codes, expiry and properties pass through
MAX_WINDOW = 1000  # a v5 upstream without a Receive Maximum (65535) still gets at most this many
ATTEMPTS_LOGGED = 3  # connection failures logged one by one; after that, only changes
STABLE_SECONDS = 30.0  # a connection that lasted this long resets the reconnection delay
DROP_LOG_SECONDS = 60.0
STATUS_SECONDS = 1.0
# Properties that describe one hop, not the message: never forwarded across the bridge.
HOP_PROPERTIES = (P.TOPIC_ALIAS, P.SUBSCRIPTION_IDENTIFIER)
_PINGREQ = encode(Pingreq(), 4)


class BridgeTransport:
    """The ``Transport`` of the local connection: its output is the bridge's input."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.listener = ListenerInfo(name=f"bridge {bridge.config.name}", protocol="bridge", local=True)
        self.peer = f"bridge:{bridge.config.name}"
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.bridge.from_local(data)

    def writelines(self, chunks: list[bytes]) -> None:
        if not self.closed:
            self.bridge.from_local(b"".join(chunks))

    def write_buffer_size(self) -> int:
        # The local broker drops QoS 0 for a slow reader: here the reader is the upstream.
        return self.bridge.upstream_backlog_bytes()

    def close(self, linger: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.bridge.local_closed()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def peer_certificate(self) -> dict[str, Any] | None:
        return None


class Bridge:
    """One ``[[bridge]]``: reconnects forever, relays between the local session and the upstream."""

    def __init__(self, engine: Engine, config: BridgeConfig) -> None:
        self.engine = engine
        self.config = config
        self.name = config.name
        self.limits = QueueLimits(0, config.backlog_max_bytes, config.backlog_full_policy)
        engine.queue_limits[config.local_clientid] = self.limits
        engine.bridge_client_ids.add(config.local_clientid)
        self.outgoing = [t for t in config.topics if t.outgoing]
        self.incoming = [t for t in config.topics if t.incoming]
        self.local: Connection | None = None
        self.transport: BridgeTransport | None = None
        self.local_reader: PacketReader | None = None
        self.local_ready: asyncio.Future[None] | None = None
        self.local_acks_awaited: set[int] = set()
        self.link: UpstreamLink | None = None
        self.upstream_version = config.protocol_version
        self.connected = False
        self.lost: asyncio.Event = asyncio.Event()
        self.window = config.max_inflight
        # inbound: upstream PUBLISH waiting for room in the local receive window
        self.inbound_waiting: deque[Publish] = deque()
        self.inbound_pubrel: list[int] = []  # PUBREL from upstream waiting for the local session
        self.inbound_open: set[int] = set()  # packet ids fed to the local broker, not yet finished
        self.inbound_unmatched: set[int] = set()  # QoS 2 no topic mapped: acknowledged, not delivered
        self.released_locally: set[int] = set()  # PUBREL we made up ourselves: swallow the PUBCOMP
        self.pacer = Pacer(config.max_rate, self._write_up)
        self.private_unsupported: set[tuple[str, int]] = set()
        self.suback: asyncio.Future[Suback] | None = None
        self.last_forward: float | None = None
        self.forwarded = 0
        self.rejected = 0
        self.rejected_logged_at = float("-inf")
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self._published: dict[str, str] = {}

    # ---- start and stop ---------------------------------------------------------------
    async def start(self) -> None:
        """Make sure the local session and its subscriptions exist, then connect in the background.

        The session must exist before the upstream is ever reached: a gateway that boots
        without uplink keeps what its devices publish from the first message on.
        """
        try:
            await self._attach_local(0)
        except RuntimeError as exc:
            log.error("Bridge %s not started: %s", self.name, exc)
            self._detach_local("bridge not started")
            return
        self._detach_local("bridge starting; upstream not connected yet")
        self._publish_state()
        self.tasks.append(asyncio.ensure_future(self._run()))
        self.tasks.append(asyncio.ensure_future(self._status_loop()))

    async def stop(self) -> None:
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        link = self.link
        if link is not None and not link.closed:
            link.write(encode(Disconnect(), self.upstream_version))
            link.close("bridge stopping")
        self._detach_local("bridge stopping")
        self.connected = False
        self._publish_state()

    # ---- the connection loop ----------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0  # rounds over every address that ended without a lasting connection
        logged: dict[tuple[str, int], tuple[int, str]] = {}  # address -> (failures logged, last reason)
        while not self.stopping:
            for host, port in self.config.addresses:
                try:
                    link, connack = await self._open(host, port)
                except LinkFailure as exc:
                    count, last_reason = logged.get((host, port), (0, ""))
                    if count < ATTEMPTS_LOGGED or str(exc) != last_reason:
                        log.warning("Bridge %s: connecting to %s:%d failed: %s", self.name, host, port, exc)
                        if count + 1 == ATTEMPTS_LOGGED:
                            log.warning("Bridge %s: will keep retrying %s:%d; further failures are logged only "
                                        "when the reason changes", self.name, host, port)
                    logged[(host, port)] = (count + 1, str(exc))
                    continue
                logged.clear()
                started = time.monotonic()
                try:
                    await self._serve(link, connack, host, port)
                except Exception:
                    if self.stopping:
                        return
                    log.exception("Bridge %s: relaying failed; reconnecting", self.name)
                if self.stopping:
                    return
                failures = 0 if time.monotonic() - started >= STABLE_SECONDS else failures
                break
            if self.stopping:
                return
            failures += 1
            await asyncio.sleep(self._delay(failures))

    async def _open(self, host: str, port: int) -> tuple[UpstreamLink, Connack]:
        """Connect; with try_private first, and without it where the upstream refuses the bridge bit."""
        receive_maximum = self.engine.config.max_inflight_messages
        packet_size = self.engine.config.max_packet_size
        private = (self.config.try_private and self.upstream_version == 4
                   and (host, port) not in self.private_unsupported)
        try:
            return await open_link(self.config, host, port, private, receive_maximum, packet_size)
        except LinkFailure as exc:
            if not exc.unsupported_private:
                raise
        log.info("Bridge %s: %s:%d does not accept the bridge protocol bit (try_private); "
                 "connecting as a plain 3.1.1 client", self.name, host, port)
        self.private_unsupported.add((host, port))
        return await open_link(self.config, host, port, False, receive_maximum, packet_size)

    def _delay(self, failures: int) -> float:
        """Exponential backoff from 1 s up to ``restart_timeout``, with jitter (half to full)."""
        ceiling = min(float(self.config.restart_timeout), 2.0 ** max(0, failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _serve(self, link: UpstreamLink, connack: Connack, host: str, port: int) -> None:
        """One upstream connection: subscribe, attach the local session, relay until it drops."""
        self.link = link
        self.lost = asyncio.Event()
        self.inbound_waiting.clear()
        self.inbound_pubrel.clear()
        self.inbound_open.clear()
        self.inbound_unmatched.clear()
        self.pacer.reset()
        v5 = self.upstream_version == MQTT_5
        if v5:
            self.window = min(connack.properties.get(P.RECEIVE_MAXIMUM, 65535), MAX_WINDOW)
        else:
            self.window = self.config.max_inflight
        max_packet = connack.properties.get(P.MAXIMUM_PACKET_SIZE) if v5 else None
        link.start(self._from_upstream, self._upstream_lost)
        keepalive = asyncio.ensure_future(self._keepalive(link))
        try:
            if link.closed:
                return
            if self.incoming:
                await self._subscribe_upstream(link)
                if link.closed:
                    return
            await self._attach_local(self.window, max_packet, not connack.session_present)
            self.connected = True
            self._publish_state()
            log.info("Bridge %s connected to %s:%d (%s, session present %d, window %d)", self.name, host, port,
                     "v5" if v5 else "v3.1.1", 1 if connack.session_present else 0, self.window)
            self._release_inbound()
            await self.lost.wait()
        finally:
            keepalive.cancel()
            was_connected = self.connected
            self.connected = False
            self.link = None
            self.pacer.reset()
            self._detach_local(f"upstream connection lost: {link.close_reason or 'bridge stopping'}")
            if not link.closed:
                if self.stopping:
                    link.write(encode(Disconnect(), self.upstream_version))
                    link.close("bridge stopping")
                else:
                    link.abort("relaying failed")
            if was_connected:
                log.warning("Bridge %s disconnected from %s:%d: %s", self.name, host, port,
                            link.close_reason or "closed")
            self._publish_state()

    async def _subscribe_upstream(self, link: UpstreamLink) -> None:
        """Subscribe to the ``in``/``both`` topics before the local session starts sending.

        Waiting for the SUBACK keeps its packet id apart from those of the re-sent PUBLISH.
        """
        v5 = self.upstream_version == MQTT_5
        subscriptions = [
            (t.remote_filter, SubscriptionOptions(t.qos, no_local=v5 and t.direction == "both",
                                                  retain_as_published=v5, retain_handling=1 if v5 else 0))
            for t in self.incoming
        ]
        suback = self.suback = asyncio.get_running_loop().create_future()
        link.write(encode(Subscribe(1, subscriptions), self.upstream_version))
        lost = asyncio.ensure_future(self.lost.wait())
        await asyncio.wait({suback, lost}, timeout=self.config.connect_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        if not suback.done():
            if not link.closed:
                link.abort("no SUBACK")
            return
        for (topic_filter, _), code in zip(subscriptions, suback.result().reason_codes):
            if code >= 0x80:
                log.warning("Bridge %s: the upstream refused the subscription to %s (code %#04x)",
                            self.name, topic_filter, code)

    async def _keepalive(self, link: UpstreamLink) -> None:
        interval = self.config.keepalive
        if not interval:
            return
        while not link.closed:
            await asyncio.sleep(interval)
            if time.monotonic() - link.last_received > interval * 1.5:
                link.abort("keepalive timeout: no answer from the upstream broker")
                return
            link.write(_PINGREQ)

    def _upstream_lost(self, reason: str) -> None:
        self.lost.set()

    # ---- the local connection ------------------------------------------------------------------
    async def _attach_local(self, window: int, max_packet: int | None = None, upstream_fresh: bool = False) -> None:
        """Connect the local session (created the first time), subscribe, and wait for the SUBACK."""
        config = self.config
        props: dict[int, object] = {P.SESSION_EXPIRY_INTERVAL: NEVER_EXPIRES}
        if max_packet:
            props[P.MAXIMUM_PACKET_SIZE] = max_packet
        transport = self.transport = BridgeTransport(self)
        self.local_reader = PacketReader(client_side=True, version=LOCAL_VERSION)
        self.local_ready = asyncio.get_running_loop().create_future()
        self.local_acks_awaited = set()
        self.released_locally = set()
        local = self.local = Connection(self.engine, transport)
        local.data_received(encode(Connect(config.local_clientid, LOCAL_VERSION, "MQTT", False, 0, None, None,
                                           None, props), LOCAL_VERSION))
        if local.session is None:
            raise RuntimeError(f"bridge {self.name}: the local broker refused the bridge session")
        # The window is the upstream's, whatever [limits] max_inflight_messages says for devices;
        # and the backlog must not expire, whatever max_session_expiry_interval says.
        local.send_quota = window
        session = local.session
        if session.expiry_interval != NEVER_EXPIRES:
            session.expiry_interval = NEVER_EXPIRES
            self.engine.lifecycle.save(session)
        requests: list[bytes] = []
        wanted = {t.local_filter: t for t in self.outgoing}
        stale = [f for f in session.subscriptions if f not in wanted]
        if wanted:
            requests.append(encode(Subscribe(1, [
                (f, SubscriptionOptions(t.qos, no_local=True, retain_as_published=True, retain_handling=1))
                for f, t in wanted.items()
            ]), LOCAL_VERSION))
            self.local_acks_awaited.add(1)
        if stale:
            requests.append(encode(Unsubscribe(2, stale), LOCAL_VERSION))
            self.local_acks_awaited.add(2)
        if upstream_fresh and session.inbound_qos2:
            # The upstream lost its session: its QoS 2 ids that the local session still holds
            # are finished (routed at PUBLISH time); release them, or a new message reusing
            # an id would be taken for a re-send and never delivered.
            for packet_id in sorted(session.inbound_qos2):
                self.released_locally.add(packet_id)
                requests.append(encode(Pubrel(packet_id), LOCAL_VERSION))
        if requests:
            local.data_received(b"".join(requests))
        if not self.local_acks_awaited:
            self.local_ready.set_result(None)
        await self.local_ready

    def _detach_local(self, why: str) -> None:
        local = self.local
        if local is None:
            return
        self.local = None
        if self.transport is not None:
            self.transport.closed = True
        local.connection_lost(ConnectionError(why))

    def local_closed(self) -> None:
        """The local broker closed the bridge's connection (shutdown, or a takeover)."""
        self.local = None
        if self.local_ready is not None and not self.local_ready.done():
            self.local_ready.set_exception(RuntimeError("local connection closed"))
        link = self.link
        if link is not None and not link.closed and not self.stopping:
            link.abort("the local broker closed the bridge's session")

    def upstream_backlog_bytes(self) -> int:
        link = self.link
        return self.pacer.held_bytes + (link.buffer_size() if link is not None else 0)

    # ---- local -> upstream ----------------------------------------------------------------------
    def from_local(self, data: bytes) -> None:
        reader = self.local_reader
        if reader is None:
            return
        try:
            packets = reader.feed(data)
        except MQTTError as exc:  # the local broker never sends a bad packet; if it did, say so
            log.error("Bridge %s: bad packet from the local broker: %s", self.name, exc)
            return
        out: list[tuple[bytes, bool]] = []
        version = self.upstream_version
        for packet in packets:
            kind = type(packet)
            if kind is Publish:
                assert isinstance(packet, Publish)
                data_up = self._outgoing_publish(packet)
                if data_up is not None:
                    out.append((data_up, True))
            elif kind is Pubrel:
                out.append((encode(packet, version), False))
            elif kind is Puback or kind is Pubcomp:
                packet_id = packet.packet_id  # type: ignore[union-attr]
                if kind is Pubcomp and packet_id in self.released_locally:
                    self.released_locally.discard(packet_id)
                    continue
                self.inbound_open.discard(packet_id)
                out.append((encode(packet, version), False))
            elif kind is Pubrec:
                out.append((encode(packet, version), False))
            elif kind is Suback or kind is Unsuback:
                self._local_ack(packet)  # type: ignore[arg-type]
            elif kind is Connack:
                pass  # checked by _attach_local: the session is set
            elif kind is Disconnect:
                log.warning("Bridge %s: the local broker disconnected the bridge: %s", self.name, packet)
        link = self.link
        if link is None or link.closed:
            return  # nothing goes up without a link; the session re-sends after the next attach
        self.pacer.send(out)
        if self.inbound_waiting:
            self._release_inbound()

    def _local_ack(self, packet: Suback | Unsuback) -> None:
        if isinstance(packet, Suback):
            for code in packet.reason_codes:
                if code >= 0x80:
                    log.error("Bridge %s: the local broker refused a subscription (code %#04x)", self.name, code)
        self.local_acks_awaited.discard(packet.packet_id)
        if not self.local_acks_awaited and self.local_ready is not None and not self.local_ready.done():
            self.local_ready.set_result(None)

    def _topic_for(self, packet: Publish) -> TopicConfig | None:
        for topic in self.outgoing:
            if topic_matches(topic.local_filter, packet.topic):
                return topic
        return None

    def _outgoing_publish(self, packet: Publish) -> bytes | None:
        topic = self._topic_for(packet)
        if topic is None:
            # A subscription of an older configuration, still in the queue: as with an unknown
            # topic, it goes up unchanged rather than being lost.
            remote = packet.topic
        else:
            remote = topic.to_remote(packet.topic)
        props = None
        if self.upstream_version == MQTT_5 and packet.properties:
            props = {k: v for k, v in packet.properties.items() if k not in HOP_PROPERTIES}
        if packet.qos == 0:
            self.forwarded += 1
            self.last_forward = time.time()
        return encode_publish(remote, packet.payload, packet.qos, packet.retain, packet.dup, packet.packet_id,
                              props, self.upstream_version)

    # ---- upstream -> local ------------------------------------------------------------------------
    def _from_upstream(self, packets: list[Packet]) -> None:
        to_local: list[bytes] = []
        for packet in packets:
            kind = type(packet)
            if kind is Publish:
                assert isinstance(packet, Publish)
                self.inbound_waiting.append(packet)
            elif kind is Puback or kind is Pubcomp:
                assert isinstance(packet, (Puback, Pubcomp))
                if packet.reason_code >= 0x80:
                    self._rejected(packet)
                self.forwarded += 1
                self.last_forward = time.time()
                to_local.append(encode(packet, LOCAL_VERSION))
            elif kind is Pubrec:
                assert isinstance(packet, Pubrec)
                if packet.reason_code >= 0x80:
                    self._rejected(packet)
                    self.forwarded += 1
                    self.last_forward = time.time()
                to_local.append(encode(packet, LOCAL_VERSION))
            elif kind is Pubrel:
                assert isinstance(packet, Pubrel)
                if packet.packet_id in self.inbound_unmatched:
                    self.inbound_unmatched.discard(packet.packet_id)
                    self._write_up([encode(Pubcomp(packet.packet_id), self.upstream_version)])
                else:
                    self.inbound_pubrel.append(packet.packet_id)
            elif kind is Suback:
                assert isinstance(packet, Suback)
                if self.suback is not None and not self.suback.done():
                    self.suback.set_result(packet)
            elif kind is Disconnect:
                assert isinstance(packet, Disconnect)
                reason = packet.properties.get(P.REASON_STRING, "")
                if self.link is not None:
                    self.link.abort(f"DISCONNECT from the upstream broker (code {packet.reason_code:#04x}"
                                    f"{', ' + reason if reason else ''})")
            # PINGRESP, UNSUBACK: nothing to do (the link noted that something arrived)
        local = self.local
        if to_local and local is not None:
            local.data_received(b"".join(to_local))
        if self.inbound_waiting or self.inbound_pubrel:
            self._release_inbound()

    def _rejected(self, packet: Puback | Pubrec | Pubcomp) -> None:
        """The upstream took a message but refused it (v5 reason code): finished, and counted.

        Logged at most once a minute: a wrong upstream ACL would refuse every message.
        """
        self.rejected += 1
        now = time.monotonic()
        if now - self.rejected_logged_at >= DROP_LOG_SECONDS:
            log.warning("Bridge %s: the upstream refused a message (code %#04x%s); %d refused since start",
                        self.name, packet.reason_code,
                        f", {packet.properties[P.REASON_STRING]}" if P.REASON_STRING in packet.properties else "",
                        self.rejected)
            self.rejected_logged_at = now

    def _release_inbound(self) -> None:
        """Feed upstream PUBLISH to the local broker while its receive window has room."""
        local = self.local
        ready = self.local_ready
        if local is None or ready is None or not ready.done() or ready.exception() is not None:
            return
        config = self.engine.config
        room = config.max_inflight_messages
        batch: list[bytes] = []
        if self.inbound_pubrel:
            # Never behind a PUBLISH waiting for room: the PUBCOMP they bring makes the room.
            batch.extend(encode(Pubrel(packet_id), LOCAL_VERSION) for packet_id in self.inbound_pubrel)
            self.inbound_pubrel.clear()
        acks: list[bytes] = []
        waiting = self.inbound_waiting
        while waiting:
            packet = waiting[0]
            if packet.qos and len(self.inbound_open) >= room and packet.packet_id not in self.inbound_open:
                break
            waiting.popleft()
            topic = next((t for t in self.incoming if topic_matches(t.remote_filter, packet.topic)), None)
            if topic is None:
                # Not ours to deliver (a subscription of an older configuration): finish it upstream.
                acks.extend(self._finish_upstream(packet))
                continue
            props = {k: v for k, v in packet.properties.items() if k not in HOP_PROPERTIES} \
                if packet.properties else None
            # What the local broker would refuse by closing the connection must not reach it: the
            # upstream would send it again after every reconnect.
            retain = packet.retain and config.retain_available
            data = encode_publish(topic.to_local(packet.topic), packet.payload, packet.qos, retain,
                                  packet.dup, packet.packet_id, props, LOCAL_VERSION)
            if len(data) > config.max_packet_size:
                log.warning("Bridge %s: dropping a message on %s from the upstream: %d bytes, more than "
                            "max_packet_size", self.name, packet.topic, len(data))
                acks.extend(self._finish_upstream(packet))
                continue
            if packet.qos:
                self.inbound_open.add(cast_id(packet))
            batch.append(data)
        if acks:
            self._write_up(acks)
        if batch:
            local.data_received(b"".join(batch))

    def _finish_upstream(self, packet: Publish) -> list[bytes]:
        """Acknowledge an upstream message that will not be delivered locally."""
        if packet.qos == 1:
            return [encode(Puback(cast_id(packet)), self.upstream_version)]
        if packet.qos == 2:
            self.inbound_unmatched.add(cast_id(packet))
            return [encode(Pubrec(cast_id(packet)), self.upstream_version)]
        return []

    def _write_up(self, chunks: list[bytes]) -> None:
        link = self.link
        if link is not None and not link.closed:
            if len(chunks) == 1:
                link.write(chunks[0])
            else:
                link.writelines(chunks)

    # ---- state for operators ($SYS, like mosquitto's) ----------------------------------------------
    def backlog(self) -> tuple[int, int]:
        """(messages, payload bytes) waiting for the upstream, in flight included."""
        session = self.engine.sessions.get(self.config.local_clientid)
        if session is None:
            return 0, 0
        inflight = session.inflight
        return (session.queued_count + len(inflight),
                session.queued_bytes + sum(len(e.message.payload) for e in inflight.values()))

    def _publish(self, leaf: str, value: str) -> None:
        topic = f"$SYS/broker/connection/{self.name}/{leaf}"
        if self._published.get(topic) == value:
            return
        self._published[topic] = value
        # Retained in RAM only, as the other $SYS topics: they describe this run.
        self.engine.route(Message(topic, value.encode(), 0, True), None, persist_retained=False)

    def _publish_state(self) -> None:
        self._publish("state", "1" if self.connected else "0")

    def publish_status(self) -> None:
        self._publish_state()  # mosquitto's notification: published even when sys_interval = 0
        if not self.engine.config.sys_interval:
            return
        messages, size = self.backlog()
        self._publish("backlog/messages", str(messages))
        self._publish("backlog/bytes", str(size))
        self._publish("dropped", str(self.limits.dropped))
        self._publish("refused", str(self.rejected))
        if self.last_forward is not None:
            self._publish("last_forward", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_forward)))

    async def _status_loop(self) -> None:
        logged_drops = 0
        last_log = float("-inf")
        while True:
            await asyncio.sleep(STATUS_SECONDS)
            try:
                self.publish_status()
                dropped = self.limits.dropped
                if dropped > logged_drops and time.monotonic() - last_log >= DROP_LOG_SECONDS:
                    last_log = time.monotonic()
                    log.warning("Bridge %s: backlog full (%d bytes, %s): dropped %d messages since the last "
                                "report, %d since start", self.name, self.config.backlog_max_bytes,
                                self.config.backlog_full_policy, dropped - logged_drops, dropped)
                    logged_drops = dropped
            except Exception:
                log.exception("Bridge %s: publishing its state failed", self.name)


def warn_about_orphans(engine: Engine, bridges: list[Bridge]) -> None:
    """A bridge removed from the configuration leaves its session (and backlog) behind: say so."""
    configured = {bridge.config.local_clientid for bridge in bridges}
    for client_id, session in engine.sessions.items():
        if client_id.startswith("$bridge/") and client_id not in configured:
            log.warning("session %s belongs to a bridge that is no longer configured; it keeps %d queued "
                        "messages and never expires: configure the bridge again to send them", client_id,
                        session.queued_count)


def cast_id(packet: Publish) -> int:
    """The packet id of a QoS 1/2 PUBLISH (the codec guarantees one)."""
    assert packet.packet_id is not None
    return packet.packet_id
