"""One client connection: framing, keepalive, ordered output, closing.

The edge (``server/``) gives it a ``Transport`` and feeds received bytes to
``data_received``; each decoded packet goes to its handler (``core/handlers/``,
one module per packet type, as mosquitto's ``handle_*.c``). Output goes through
``send``, which keeps it strictly in order behind acknowledgements that wait for a
storage commit. The session it serves comes from ``core/sessions.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from broker.core import packetlog
from broker.core.ackgate import AckGate
from broker.core.aliases import OutboundAliases
from broker.core.empty import EMPTY_DEQUE, EMPTY_SET
from broker.core.flow import HELD_BYTES_LIMIT, Hold
from broker.core.handlers import HANDLERS, dispatch
from broker.core.session import Session
from broker.core.slow_consumer import SOFT_BYTES, OutputMeter
from broker.core.states import AUTHENTICATING, CLOSED, CONNECTED, CONNECTING
from broker.core.transport import Transport
from broker.protocol import properties as P
from broker.protocol import reason_codes as RC
from broker.protocol.codec import PacketReader, encode, encode_publish
from broker.protocol.errors import MQTTError, UnsupportedProtocolVersion
from broker.protocol.packets import (
    MQTT_5,
    Auth,
    Connack,
    Disconnect,
    Publish,
    Pubrel,
    Subscribe,
    Unsubscribe,
)
from broker.message import Message

if TYPE_CHECKING:
    from broker.auth.access import ClientRights
    from broker.core.engine import Engine
    from broker.protocol.packets import Packet, Will

log = logging.getLogger("broker")

# An alias costs 3 bytes (property id and a two-byte number); a topic costs 2 + its length.
TOPIC_ALIAS_MIN_LENGTH = 2

# Packets that wait behind a held PUBLISH, in order (backpressure, ``flow.py``). The others
# (acknowledgements, PINGREQ) are handled at once: they let the client's own queue drain.
DEFERRED_TYPES = frozenset({Publish, Subscribe, Unsubscribe, Disconnect, Auth})
# What a waiting packet counts against HELD_BYTES_LIMIT besides its topic and payload.
PACKET_OVERHEAD = 64


def waiting_cost(packet: Packet) -> int:
    """The bytes a packet held back by backpressure counts: its topic too, since a PUBLISH
    with a 30 KB topic and a 1-byte payload is 30 KB (counted as 65 bytes, 2,000 of them
    waited: 60 MB, where HELD_BYTES_LIMIT should have paused the socket at 64 KB)."""
    if type(packet) is Publish:
        return PACKET_OVERHEAD + len(packet.topic) + len(packet.payload)
    return PACKET_OVERHEAD


class Backpressure:
    """A held client's side of backpressure (``flow.py``): why it is held, what waits.

    Made when a client is first held and dropped once nothing holds or waits: most clients
    never are, and an idle one should not carry five fields for it.
    """

    __slots__ = ("held_by", "packets", "bytes", "reading_paused", "resume_scheduled")

    def __init__(self) -> None:
        self.held_by: set[Hold] = set()
        self.packets: deque[Packet] = deque()  # read, not handled yet, in order
        self.bytes = 0  # what they count against HELD_BYTES_LIMIT
        self.reading_paused = False
        self.resume_scheduled = False


class Connection:
    __slots__ = (
        "engine",
        "transport",
        "reader",
        "state",
        "version",
        "client_id",
        "username",
        "session",
        "keepalive",
        "last_received",
        "will",
        "send_quota",
        "max_send_packet_size",
        "aliases_in",
        "aliases_out",
        "inbound_unacked",
        "ordered_output",
        "close_reason",
        "disconnected_cleanly",
        "problem_information",
        "out",
        "closing",
        "trace",
        "refusal",
        "connect_deadline",
        "meter",
        "bytes_written",
        "paused_for",
        "rights",
        "held",
        "backpressure",
    )

    def __init__(self, engine: Engine, transport: Transport) -> None:
        self.engine = engine
        self.transport = transport
        self.reader = PacketReader(engine.config.max_packet_size)
        self.state = CONNECTING
        self.version = 4
        self.client_id = ""
        self.username: str | None = None
        # Set by the CONNECT handler, cleared by _end. Packets after CONNECT are handled only
        # while the state is CONNECTED, so handlers may rely on it being set.
        self.session: Session | None = None
        self.keepalive = 0
        self.last_received = time.monotonic()
        # Absolute: bytes trickling in do not extend it (issue 15: one byte every 8 s held a socket forever).
        self.connect_deadline = self.last_received + engine.config.connect_timeout
        self.will: Will | None = None
        self.send_quota = engine.config.max_inflight_messages  # outbound receive window
        self.max_send_packet_size = 268_435_460
        # Containers an idle client never fills start as None or the shared empties of
        # ``empty.py`` and are made on first use: 5000 idle clients must not cost 5000 deques.
        self.aliases_in: dict[int, str] | None = None  # v5, once the client sets up an alias
        self.aliases_out: OutboundAliases | None = None  # v5, if the client accepts aliases
        self.inbound_unacked = 0  # QoS 1/2 PUBLISH received and not yet fully acknowledged
        # Output that must wait for a commit: deque of [future-or-None, bytes, ...]
        self.ordered_output: deque[list] = EMPTY_DEQUE
        self.close_reason = ""
        self.disconnected_cleanly = False
        self.problem_information = True  # v5 Request Problem Information: reason strings on acks
        self.out: list[bytes] | None = None  # written at the end of this event-loop iteration
        self.closing = False
        # mosquitto -v: every packet in and out is logged (one attribute test when off).
        self.trace = engine.config.log_packets
        # Is the client reading? (QoS 0 drops; made when its output first passes SOFT_BYTES)
        self.meter: OutputMeter | None = None
        self.bytes_written = 0  # handed to the transport so far
        self.refusal: str | None = None  # set by the edge: over a connection limit, refused at CONNECT
        # Backpressure (``flow.py``): the congested sessions this client's PUBLISHes fed, and
        # the packets waiting (unhandled, unacknowledged) until they drain.
        self.backpressure: Backpressure | None = None  # made when it is first held (flow.py)
        self.paused_for: set[str] = EMPTY_SET  # who stopped reading this client (pause_input)
        # AUTH: topic checks of this client (None: no ACL, every topic allowed), and the packets
        # received while its CONNECT is being authenticated, handled in order afterwards.
        self.rights: ClientRights | None = None
        self.held: tuple[list[Packet], MQTTError | None] | None = None
        engine.connections[self] = None
        engine.stats.connections_opened += 1
        engine.keepalive_timers.schedule(self, self.connect_deadline)

    @property
    def active_session(self) -> Session:
        """The session of a connected client (handlers run only while there is one)."""
        session = self.session
        assert session is not None, "packet handled without a session"
        return session

    @property
    def peer(self) -> str:
        """The client's address (the transport's, made when a log line asks for it)."""
        return self.transport.peer

    @property
    def name(self) -> str:
        """How log lines name this client: its client id, or its address before CONNECT."""
        return self.client_id or self.peer

    # ---- output ---------------------------------------------------------------------------
    # Packets are collected and written once per event-loop iteration (one syscall for many
    # packets). Packets that must wait for a storage commit (acknowledgements of QoS 1/2,
    # QoS 2 to persistent sessions) hold back everything after them, so order is kept.
    # Between iterations there is no list (None): an idle connection keeps none.
    def _buffer(self, data: bytes) -> None:
        out = self.out
        if out is None:
            self.out = [data]
            self.engine.loop.call_soon(self._flush)
        else:
            out.append(data)

    def _flush(self) -> None:
        out = self.out
        if out is None:
            return
        self.out = None
        if self.state != CLOSED or self.closing:
            if len(out) == 1:
                size = len(out[0])
                self.transport.write(out[0])
            else:
                size = sum(map(len, out))
                self.transport.writelines(out)
            self.bytes_written += size
            self.engine.stats.bytes_sent += size

    def send(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        if self.ordered_output:
            self.ordered_output.append([None, data])
        else:
            self._buffer(data)

    def send_after_commit(self, data: bytes, gate: AckGate | None = None) -> None:
        """Send ``data`` once every storage write issued so far is durable, or, with a
        ``gate`` (a QoS 1 PUBACK), once what the gate waits for is (``core/ackgate.py``)."""
        if self.state == CLOSED:
            return
        # A gate without stored copies: nothing of this message waits for a commit.
        if gate is None:
            future = self.engine.commit()
        else:  # only copies in flight to online subscribers: the commit may take its grace
            future = self.engine.commit(urgent=gate.pinned) if gate.copies else None
        queue = self.ordered_output
        if future is None:
            if queue:
                queue.append([None, data])
            else:
                self._buffer(data)
            return
        if queue is EMPTY_DEQUE:
            queue = self.ordered_output = deque()
        # One callback per commit flushes the whole queue: none if the last entry waits for it.
        last = queue[-1][0] if queue else None
        awaited = last is future or (type(last) is AckGate and last.commit is future)
        if gate is not None:
            gate.commit = future
            gate.on_release = self._flush_ordered_output
            queue.append([gate, data])
        elif last is future:
            queue[-1].append(data)  # same commit as the previous one
            return
        else:
            queue.append([future, data])
        if not awaited:
            future.add_done_callback(self._flush_ordered_output)

    def _flush_ordered_output(self, _future: asyncio.Future | None = None) -> None:
        queue = self.ordered_output
        while queue:
            entry = queue[0]
            future = entry[0]
            if future is not None and type(future) is AckGate:
                future = None if future.released else future.commit
            if future is not None:
                if not future.done():
                    return
                if future.cancelled() or future.exception() is not None:
                    # Not durable: never acknowledge. Close; the client will resend.
                    queue.clear()
                    self.close("storage commit failed", RC.UNSPECIFIED_ERROR)
                    return
            queue.popleft()
            if self.state != CLOSED:
                for data in entry[1:]:
                    self._buffer(data)

    def send_packet(self, packet: Packet, after_commit: bool = False, gate: AckGate | None = None) -> None:
        """Encode and send a packet (the handlers' way to answer), logged with ``-v``."""
        if self.trace:
            packetlog.sending(self, packet)
        data = encode(packet, self.version)
        if after_commit:
            self.send_after_commit(data, gate)
        else:
            self.send(data)

    def send_publish(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: list[int],
        packet_id: int | None,
        dup: bool,
        after_commit: bool = False,
    ) -> bool:
        """Encode and send one PUBLISH; False if it exceeds the client's Maximum Packet Size.

        With ``after_commit`` it goes out once the storage writes issued so far are durable.
        Nothing about the connection changes (aliases, statistics) unless it is really sent.
        """
        rights = self.rights
        if rights is not None and not (rights.receive.get(message.topic) or rights.may_receive(message.topic)):
            return False  # AUTH: read check on every message (wildcards, retained, queued, $SYS)
        # QoS 0: is the client behind? Asked at the first PUBLISH of an event-loop iteration
        # only: the transport's backlog changes only when ``_flush`` has run (a fan-out asks
        # once per subscriber, not once per message; one iteration's input may overshoot).
        if qos == 0 and self.out is None:
            buffered = self.transport.write_buffer_size()
            if buffered > SOFT_BYTES:
                if self.not_reading(buffered):
                    # A client that does not read must not make the broker buffer without bound:
                    # QoS 0 may be lost (QoS 1/2 are bounded by the in-flight window instead).
                    self.engine.dropped_messages += 1
                    self.engine.stats.dropped_slow_consumer += 1
                    return True
                self.engine.flow.output_grew(self)  # reading, more slowly: hold the publisher
        topic = message.topic
        if self.version == MQTT_5:
            props = dict(message.properties) if message.properties else {}
            if message.expires_at is not None:
                props[P.MESSAGE_EXPIRY_INTERVAL] = max(0, int(message.expires_at - time.time() + 0.999))
            if subscription_ids:
                props[P.SUBSCRIPTION_IDENTIFIER] = subscription_ids
            alias = None
            aliases = self.aliases_out
            if aliases is not None and len(topic) >= TOPIC_ALIAS_MIN_LENGTH:
                alias, known = aliases.choose(topic)
                props[P.TOPIC_ALIAS] = alias
                if known:
                    topic = ""
            data = encode_publish(topic, message.payload, qos, retain, dup, packet_id, props, MQTT_5)
            if aliases is not None and alias is not None and len(data) <= self.max_send_packet_size:
                # Only a packet that is really sent may set up or refresh an alias.
                aliases.confirm(message.topic, alias)
        elif qos == 0 and not retain:
            cached = message.wire_v4_qos0
            if cached is None:
                cached = message.wire_v4_qos0 = encode_publish(topic, message.payload, 0, False, False, None, None, 4)
            data = cached
        else:
            data = encode_publish(topic, message.payload, qos, retain, dup, packet_id, None, self.version)
        if len(data) > self.max_send_packet_size:
            log.debug("dropping message on %s for %s: larger than its maximum packet size", topic, self.client_id)
            self.engine.stats.dropped_too_large += 1
            return False
        self.engine.stats.sent_by_qos[qos] += 1
        if self.trace:
            packetlog.sending_publish(self, message, qos, retain, packet_id, dup)
        if after_commit:
            self.send_after_commit(data)
        elif self.ordered_output or self.state == CLOSED:
            self.send(data)
        else:  # ``_buffer``, inlined: the fan-out's innermost step
            out = self.out
            if out is None:
                self.out = [data]
                self.engine.loop.call_soon(self._flush)
            else:
                out.append(data)
        return True

    def not_reading(self, buffered: int) -> bool:
        """Whether QoS 0 to this client should be dropped, with ``buffered`` bytes unsent (above SOFT_BYTES)."""
        meter = self.meter
        if meter is None:
            meter = self.meter = OutputMeter(self.engine.config.max_packet_size)
        return meter.not_reading(buffered, self.bytes_written)

    def may_receive(self, topic: str) -> bool:
        """AUTH: the read check ``send_publish`` makes, for choosing a shared subscription's member."""
        rights = self.rights
        return rights is None or rights.may_receive(topic)

    def send_pubrel(self, packet_id: int, reason_code: int = 0, after_commit: bool = False) -> None:
        self.send_packet(Pubrel(packet_id, reason_code), after_commit)

    # ---- input ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self.last_received = time.monotonic()
        self.engine.stats.bytes_received += len(data)
        flow = self.engine.flow
        flow.input_received(len(data))
        try:
            packets = self.reader.feed(data)
        except UnsupportedProtocolVersion as exc:
            if self.state == AUTHENTICATING:  # only one CONNECT passes the codec; cannot happen
                return
            log.info("client from %s: unsupported protocol level %d", self.peer, exc.protocol_level)
            code = RC.V3_UNACCEPTABLE_PROTOCOL_VERSION if exc.protocol_level < 5 else RC.UNSUPPORTED_PROTOCOL_VERSION
            self._buffer(encode(Connack(False, code), 4 if exc.protocol_level < 5 else 5))
            self.close(f"unsupported protocol level {exc.protocol_level}", None, linger=True)
            return
        except MQTTError as exc:
            self.handle_all(getattr(exc, "packets_before", ()), exc)
            return
        self.handle_all(packets, None)

    def handle_all(self, packets: Iterable[Packet], error: MQTTError | None) -> None:
        """Handle packets in order, then report ``error`` (a bad packet after them), if any."""
        if self.state == AUTHENTICATING:
            self._hold(iter(packets), error)
            return
        flow = self.engine.flow
        remaining: Iterator[Packet] = iter(packets)
        for packet in remaining:
            kind = type(packet)
            if kind in DEFERRED_TYPES and (self.backpressure is not None or flow.memory_full):
                self._wait(packet)  # backpressure (flow.py)
                continue
            # ``handle``, inlined for the common case: a connected client, no -v.
            handler = HANDLERS.get(kind) if self.session is not None and not self.trace else None
            if handler is None:
                self.handle(packet)
            else:
                try:
                    handler(self, packet)
                except MQTTError as exc:
                    self.protocol_violation(str(exc), exc.reason_code)
            if self.state != CONNECTED:
                if self.state == AUTHENTICATING:  # AUTH: the rest waits for the CONNECT decision
                    self._hold(remaining, error)
                return
        if error is not None:
            self.protocol_violation(str(error), error.reason_code)

    def _hold(self, packets: Iterator[Packet], error: MQTTError | None) -> None:
        held = self.held
        if held is None:
            held = self.held = ([], None)
        held[0].extend(packets)
        if error is not None and held[1] is None:
            self.held = (held[0], error)

    def wait_for_authentication(self) -> None:
        """AUTH: the CONNECT handler awaits a decision; stop reading, hold what comes."""
        self.state = AUTHENTICATING
        self.pause_input("authentication")

    def authenticated(self) -> tuple[list[Packet], MQTTError | None]:
        """AUTH: the decision arrived; the held packets and error, to handle once accepted."""
        self.state = CONNECTING
        self.last_received = time.monotonic()  # the keepalive starts now, not before a throttled wait
        held, error = self.held or ([], None)
        self.held = None
        return held, error

    def resume(self, held: list[Packet], error: MQTTError | None) -> None:
        """AUTH: accepted after waiting: read again and handle what was held, in order."""
        self.resume_input("authentication")
        self.handle_all(held, error)

    # ---- pausing input ---------------------------------------------------------------------
    # Several owners may stop reading a client (authentication, backpressure, ...): the socket
    # is read again only when none of them holds it any more.
    def pause_input(self, reason: str) -> None:
        paused = self.paused_for
        if not paused:
            try:
                self.transport.pause_reading()
            except RuntimeError:  # closing already
                pass
        if paused is EMPTY_SET:
            paused = self.paused_for = set()
        paused.add(reason)

    def resume_input(self, reason: str) -> None:
        paused = self.paused_for
        if reason not in paused:
            return
        paused.discard(reason)
        if not paused and self.state != CLOSED:
            try:
                self.transport.resume_reading()
            except RuntimeError:
                pass

    # ---- backpressure (flow.py) -------------------------------------------------------------
    @property
    def held_by(self) -> set[Hold]:
        """Why this client's PUBLISHes wait (empty: they do not)."""
        state = self.backpressure
        return state.held_by if state is not None else EMPTY_SET

    @property
    def waiting(self) -> deque[Packet]:
        """The packets read from this client and not handled yet."""
        state = self.backpressure
        return state.packets if state is not None else EMPTY_DEQUE

    def _held_state(self) -> Backpressure:
        state = self.backpressure
        if state is None:
            state = self.backpressure = Backpressure()
        return state

    def _wait(self, packet: Packet) -> None:
        """Keep ``packet`` for later; past HELD_BYTES_LIMIT, stop reading the socket."""
        state = self._held_state()
        if not state.packets:
            self.engine.flow.waiting.add(self)
        state.packets.append(packet)
        state.bytes += waiting_cost(packet)
        if state.bytes > HELD_BYTES_LIMIT and not state.reading_paused:
            state.reading_paused = True
            self.pause_input("backpressure")

    def hold(self, reason: Hold) -> None:
        self._held_state().held_by.add(reason)

    def release(self, reason: Hold) -> None:
        state = self.backpressure
        if state is None:
            return
        state.held_by.discard(reason)
        if not state.held_by:
            if state.packets:
                self.wake()
            elif not state.reading_paused:
                self.backpressure = None  # nothing waits: back to the fast path

    def wake(self) -> None:
        """Handle waiting packets soon (not inside the handler that freed the room)."""
        state = self.backpressure
        if state is not None and state.packets and not state.resume_scheduled and self.state != CLOSED:
            state.resume_scheduled = True
            self.engine.loop.call_soon(self._resume)

    def _resume(self, force: bool = False) -> None:
        """Handle waiting packets while nothing holds this client; read again below half the bound."""
        state = self.backpressure
        if state is None:
            return
        state.resume_scheduled = False
        flow = self.engine.flow
        waiting = state.packets
        while waiting and (force or not (state.held_by or flow.memory_full)) and self.state != CLOSED:
            packet = waiting.popleft()
            state.bytes -= waiting_cost(packet)
            self.handle(packet)
        if not waiting:
            state.bytes = 0
            flow.waiting.discard(self)
        if state.reading_paused and state.bytes <= HELD_BYTES_LIMIT // 2 and self.state != CLOSED:
            state.reading_paused = False
            self.last_received = time.monotonic()  # not heard while paused: not its fault
            self.resume_input("backpressure")
        if not (waiting or state.held_by or state.reading_paused or state.resume_scheduled) and self.backpressure is state:
            self.backpressure = None  # nothing waits: back to the fast path

    def buffered_bytes(self) -> int:
        """Unsent output and waiting PUBLISHes (for the memory budget)."""
        try:
            pending = self.transport.write_buffer_size()
        except Exception:  # closed meanwhile
            pending = 0
        state = self.backpressure
        return pending + (state.bytes if state is not None else 0)

    def handle(self, packet: Packet) -> None:
        """Hand one decoded packet to its handler (the codec lets only a CONNECT through first)."""
        if self.trace:
            packetlog.received(self, packet)
        try:
            dispatch(self, packet)
        except MQTTError as exc:
            self.protocol_violation(str(exc), exc.reason_code)

    # ---- refusing and closing ------------------------------------------------------------------
    def refuse(self, reason_code: int, why: str, properties: dict | None = None) -> None:
        """Answer CONNECT with a refusing CONNACK (v3.1.1: its return code) and close."""
        if self.version == MQTT_5:
            props = {P.REASON_STRING: why[:200]}
            if properties:
                props.update(properties)
            connack = Connack(False, reason_code, props)
        else:
            connack = Connack(False, RC.connack_code_for_v3(reason_code))
        if self.trace:
            packetlog.sending(self, connack)
        self._buffer(encode(connack, self.version))
        self.close(why, None, linger=True)

    def ack_problem(self, codes: list[int], reason: str) -> dict:
        """v5 properties of an acknowledgement: a reason string when something failed and the
        client did not turn problem information off (MQTT-3.1.2-29)."""
        if self.version == MQTT_5 and self.problem_information and any(code >= 0x80 for code in codes):
            return {P.REASON_STRING: reason}
        return {}

    def protocol_violation(self, why: str, reason_code: int) -> None:
        """Close this connection for a bad packet; v5 clients get DISCONNECT with the reason."""
        log.info("client %s (%s): %s, disconnecting", self.client_id or "<unknown>", self.peer, why)
        if self.state == CONNECTING:
            if self.version == MQTT_5 or self.reader.version == MQTT_5:
                self.version = MQTT_5
                self._buffer(encode(Connack(False, reason_code), MQTT_5))
            self.close(why, None, linger=True)
        else:
            self.close(why, reason_code)

    def shutdown(self) -> None:
        self.close("broker shutting down", RC.SERVER_SHUTTING_DOWN, publish_will=False)

    def output_drained(self) -> None:
        """The edge saw the output buffer go down: publishers waiting for this client may go on."""
        if self.transport.write_buffer_size() <= SOFT_BYTES:
            self.engine.flow.output_drained(self)

    def schedule_keepalive(self) -> None:
        """CONNECT accepted: the keepalive timer replaces the CONNECT deadline (none for keepalive 0).

        Replaced, not kept until it passes: 10,000 devices connecting at once would otherwise all
        come due at their CONNECT deadline in the same tick, 10,000 keepalive checks in one go
        (3.3 ms here). ``Timers`` keeps one live deadline per key either way; the old second's
        listing is skipped when it comes.
        """
        self.connect_deadline = 0.0  # passed: an idle client need not keep its float
        timers = self.engine.keepalive_timers
        if self.keepalive:
            timers.schedule(self, self.last_received + self.keepalive * 1.5)
        else:
            timers.cancel(self)

    def check_keepalive(self, now: float) -> float | None:
        """Close a connection past its CONNECT deadline or keepalive; else when to look again."""
        if self.state == AUTHENTICATING:
            return now + 1.0  # AUTH: the decision always comes (throttling waits at most a minute)
        if self.state == CONNECTING:
            if now > self.connect_deadline:
                timeout = self.engine.config.connect_timeout
                log.info("client from %s: no CONNECT within %d s, closing", self.peer, timeout)
                self.close(f"no CONNECT within {timeout} s", None)
                return None
            return self.connect_deadline
        if self.state == CLOSED or not self.keepalive:
            return None
        if self.backpressure is not None and self.backpressure.reading_paused:
            return now + 1.0  # we do not read it (backpressure): its PINGREQ cannot be seen
        limit = self.keepalive * 1.5
        if now - self.last_received > limit:
            self.close("keepalive timeout", RC.KEEP_ALIVE_TIMEOUT)
            return None
        return self.last_received + limit

    def close(self, why: str, reason_code: int | None, publish_will: bool = True, linger: bool = False) -> None:
        """Close the connection; send a v5 DISCONNECT first when reason_code is given.

        ``linger``: a final packet (a refusing CONNACK) was sent; the transport keeps
        reading for a while so that the client can read it (a DISCONNECT implies it).
        """
        if self.state == CLOSED:
            return
        was_connected = self.state == CONNECTED
        if reason_code is not None and was_connected and self.version == MQTT_5:
            self.ordered_output.clear()
            disconnect = Disconnect(reason_code, {P.REASON_STRING: why[:200]})
            if self.trace:
                packetlog.sending(self, disconnect)
            self._buffer(encode(disconnect, MQTT_5))
            linger = True
        self.close_reason = why
        self.state = CLOSED
        self.closing = True
        self._flush()
        self.closing = False
        self.transport.close(linger)
        self._end(publish_will)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting and self.state != CLOSED:
            # What the client sent before it closed is handled (a DISCONNECT among it, too):
            # it was read, and a QoS 0 message has no other chance.
            self._resume(force=True)
        if self.state != CLOSED:
            self.state = CLOSED
            self.close_reason = f"connection lost: {exc}" if exc else "closed by client"
            self._end(True)

    def _end(self, publish_will: bool) -> None:
        engine = self.engine
        engine.connections.pop(self, None)
        engine.keepalive_timers.cancel(self)
        engine.flow.output_drained(self)  # as a subscriber, it holds no one any more
        state = self.backpressure
        if state is not None:
            engine.flow.forget(self, state.held_by)
            self.backpressure = None
        session = self.session
        if session is None:
            return
        self.session = None
        engine.stats.count_disconnect(self.close_reason)
        if session.connection is self:
            log.info("Client %s disconnected: %s.", self.client_id, self.close_reason)
        will = self.will if publish_will and not self.disconnected_cleanly else None
        self.will = None
        engine.lifecycle.close(self, session, will, self.rights)  # AUTH: the will is checked when published
