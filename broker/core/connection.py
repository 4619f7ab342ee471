"""One client connection: turns decoded packets into engine calls and replies.

The asyncio edge (``server/transport.py``) feeds received bytes to
``data_received`` and reports ``connection_lost``; everything else happens
here, synchronously. Output goes through ``send``, which keeps it strictly in
order behind acknowledgements that wait for a storage commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from broker.auth.access import Decision
from broker.auth.base import Credentials
from broker.core.engine import Engine, message_from_publish
from broker.core.session import Session
from broker.core.transport import Transport
from broker.protocol import properties as P
from broker.protocol import reason_codes as RC
from broker.protocol.codec import PacketReader, encode, encode_publish
from broker.protocol.errors import MQTTError, UnsupportedProtocolVersion
from broker.protocol.packets import (
    MQTT_5,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from broker.protocol.topics import is_valid_topic_filter, is_valid_topic_name, split_shared
from broker.storage.base import NEVER_EXPIRES, StoredMessage

if TYPE_CHECKING:
    from broker.auth.access import ClientRights
    from broker.protocol.packets import Packet, Will

log = logging.getLogger("broker")

# Connection states
CONNECTING = 0
CONNECTED = 1
CLOSED = 2
AUTHENTICATING = 3  # AUTH: CONNECT received, waiting for engine.auth's decision; later packets are held

TOPIC_ALIAS_MIN_LENGTH = 8

# Bytes waiting in a connection's socket buffer beyond which QoS 0 messages to it are dropped.
SLOW_CONSUMER_BYTES = 1 << 20

invalid_filter_reason = "topic filter invalid"  # shorter topics are cheaper to send than to alias

_PINGRESP = b"\xd0\x00"


class Connection:
    __slots__ = (
        "engine",
        "transport",
        "peer",
        "reader",
        "state",
        "version",
        "client_id",
        "session",
        "keepalive",
        "last_received",
        "will",
        "send_quota",
        "max_send_packet_size",
        "topic_alias_max_out",
        "aliases_in",
        "aliases_out",
        "inbound_unacked",
        "ordered_output",
        "close_reason",
        "disconnected_cleanly",
        "protocol_label",
        "problem_information",
        "out",
        "closing",
        "rights",
        "held",
        "held_error",
    )

    def __init__(self, engine: Engine, transport: Transport) -> None:
        self.engine = engine
        self.transport = transport
        self.peer = transport.peer
        self.reader = PacketReader(engine.config.max_packet_size)
        self.state = CONNECTING
        self.version = 4
        self.client_id = ""
        # Set by on_connect, cleared by _end. Packets after CONNECT are handled only while the
        # state is CONNECTED, so the per-packet handlers cast it to Session instead of testing.
        self.session: Session | None = None
        self.keepalive = 0
        self.last_received = time.monotonic()
        self.will: Will | None = None
        self.send_quota = engine.config.max_inflight_messages  # outbound receive window
        self.max_send_packet_size = 268_435_460
        self.topic_alias_max_out = 0
        self.aliases_in: dict[int, str] = {}
        self.aliases_out: dict[str, int] = {}
        self.inbound_unacked = 0  # QoS 1/2 PUBLISH received and not yet fully acknowledged
        # Output that must wait for a commit: deque of [future-or-None, bytes]
        self.ordered_output: deque[list] = deque()
        self.close_reason = ""
        self.disconnected_cleanly = False
        self.protocol_label = ""
        self.problem_information = True  # v5 Request Problem Information: reason strings on acks
        self.out: list[bytes] = []  # written at the end of this event-loop iteration
        self.closing = False
        # AUTH: topic checks of this client (None: no ACL, every topic allowed), and the packets
        # received while its CONNECT is being authenticated, handled in order afterwards.
        self.rights: ClientRights | None = None
        self.held: list[Packet] = []
        self.held_error: MQTTError | None = None
        engine.connections.add(self)

    # ---- output ---------------------------------------------------------------------------
    # Packets are collected and written once per event-loop iteration (one syscall for many
    # packets). Packets that must wait for a storage commit (acknowledgements of QoS 1/2,
    # QoS 2 to persistent sessions) hold back everything after them, so order is kept.
    def _buffer(self, data: bytes) -> None:
        out = self.out
        out.append(data)
        if len(out) == 1:
            self.engine.loop.call_soon(self._flush)

    def _flush(self) -> None:
        out = self.out
        if not out:
            return
        try:
            if self.state != CLOSED or self.closing:
                if len(out) == 1:
                    self.transport.write(out[0])
                else:
                    self.transport.writelines(out)
        finally:
            out.clear()

    def send(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        if self.ordered_output:
            self.ordered_output.append([None, data])
        else:
            self._buffer(data)

    def send_after_commit(self, data: bytes) -> None:
        """Send ``data`` once every storage write issued so far is durable."""
        if self.state == CLOSED:
            return
        future = self.engine.commit()
        queue = self.ordered_output
        if future is None:
            if queue:
                queue.append([None, data])
            else:
                self._buffer(data)
            return
        if queue and queue[-1][0] is future:
            queue[-1].append(data)  # same commit as the previous one: one callback for both
            return
        queue.append([future, data])
        future.add_done_callback(self._flush_ordered_output)

    def _flush_ordered_output(self, _future: asyncio.Future | None = None) -> None:
        queue = self.ordered_output
        while queue:
            entry = queue[0]
            future = entry[0]
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

    def send_packet(self, packet: Packet) -> None:
        self.send(encode(packet, self.version))

    def send_publish(
        self,
        message: StoredMessage,
        qos: int,
        retain: bool,
        subscription_ids: list[int],
        packet_id: int | None,
        dup: bool,
        after_commit: bool = False,
    ) -> bool:
        """Encode and send one PUBLISH; False if it exceeds the client's Maximum Packet Size.

        With ``after_commit`` it goes out once the storage writes issued so far are durable.
        """
        rights = self.rights
        if rights is not None and not rights.may_receive(message.topic):
            return False  # AUTH: read check on every message (wildcards, retained, queued, $SYS)
        if qos == 0 and self.transport.write_buffer_size() > SLOW_CONSUMER_BYTES:
            # A client that does not read must not make the broker buffer without bound:
            # QoS 0 may be lost (QoS 1/2 are bounded by the in-flight window instead).
            self.engine.dropped_messages += 1
            return True
        topic = message.topic
        if self.version == MQTT_5:
            props = dict(message.properties) if message.properties else {}
            if message.expires_at is not None:
                props[P.MESSAGE_EXPIRY_INTERVAL] = max(0, int(message.expires_at - time.time() + 0.999))
            if subscription_ids:
                props[P.SUBSCRIPTION_IDENTIFIER] = subscription_ids
            alias_max = self.topic_alias_max_out
            if alias_max and len(topic) >= TOPIC_ALIAS_MIN_LENGTH:
                alias = self.aliases_out.get(topic)
                if alias is not None:
                    props[P.TOPIC_ALIAS] = alias
                    topic = ""
                elif len(self.aliases_out) < alias_max:
                    alias = len(self.aliases_out) + 1
                    self.aliases_out[topic] = alias
                    props[P.TOPIC_ALIAS] = alias
            data = encode_publish(topic, message.payload, qos, retain, dup, packet_id, props, MQTT_5)
        elif qos == 0 and not retain:
            cached = message.wire_v4_qos0
            if cached is None:
                cached = message.wire_v4_qos0 = encode_publish(topic, message.payload, 0, False, False, None, None, 4)
            data = cached
        else:
            data = encode_publish(topic, message.payload, qos, retain, dup, packet_id, None, self.version)
        if len(data) > self.max_send_packet_size:
            log.debug("dropping message on %s for %s: larger than its maximum packet size", topic, self.client_id)
            return False
        self.engine.stats.publish_sent += 1
        (self.send_after_commit if after_commit else self.send)(data)
        return True

    def send_pubrel(self, packet_id: int, reason_code: int = 0, after_commit: bool = False) -> None:
        data = encode(Pubrel(packet_id, reason_code), self.version)
        (self.send_after_commit if after_commit else self.send)(data)

    # ---- input ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self.last_received = time.monotonic()
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
        remaining: Iterator[Packet] = iter(packets)
        for packet in remaining:
            self.handle(packet)
            if self.state != CONNECTED:
                if self.state == AUTHENTICATING:  # AUTH: the rest waits for the CONNECT decision
                    self._hold(remaining, error)
                return
        if error is not None:
            self.protocol_violation(str(error), error.reason_code)

    def _hold(self, packets: Iterator[Packet], error: MQTTError | None) -> None:
        self.held.extend(packets)
        if error is not None and self.held_error is None:
            self.held_error = error

    def handle(self, packet: Packet) -> None:
        try:
            if self.state == CONNECTING:
                self.on_connect(cast(Connect, packet))  # the codec only lets a CONNECT through first
                return
            # One type() call, then identity tests. mypy narrows only an inline `type(packet) is X`,
            # not `kind is X`, hence the casts (no run-time check). After CONNECT and until the
            # state is CLOSED (data_received stops there) the session is set.
            kind = type(packet)
            if kind is Publish:
                self.on_publish(cast(Publish, packet))
            elif kind is Puback:
                cast(Session, self.session).on_puback(cast(Puback, packet).packet_id)
            elif kind is Pubrec:
                self.on_pubrec(cast(Pubrec, packet))
            elif kind is Pubrel:
                self.on_pubrel(cast(Pubrel, packet))
            elif kind is Pubcomp:
                cast(Session, self.session).on_pubcomp(cast(Pubcomp, packet).packet_id)
            elif kind is Subscribe:
                self.on_subscribe(cast(Subscribe, packet))
            elif kind is Unsubscribe:
                self.on_unsubscribe(cast(Unsubscribe, packet))
            elif kind is Pingreq:
                self.send(_PINGRESP)
            elif kind is Disconnect:
                self.on_disconnect(cast(Disconnect, packet))
            elif kind is Auth:
                # No enhanced authentication method was agreed in CONNECT.
                self.protocol_violation("AUTH without an authentication method", RC.PROTOCOL_ERROR)
            else:
                self.protocol_violation(f"unexpected {kind.__name__} from a client", RC.PROTOCOL_ERROR)
        except MQTTError as exc:
            self.protocol_violation(str(exc), exc.reason_code)

    # ---- CONNECT ------------------------------------------------------------------------------
    def refuse(self, reason_code: int, why: str) -> None:
        if self.version == MQTT_5:
            self._buffer(encode(Connack(False, reason_code, {P.REASON_STRING: why[:200]}), MQTT_5))
        else:
            self._buffer(encode(Connack(False, RC.connack_code_for_v3(reason_code)), self.version))
        self.close(why, None, linger=True)

    def on_connect(self, packet: Connect) -> None:
        engine = self.engine
        config = engine.config
        self.version = version = packet.protocol_level
        props = packet.properties
        client_id = packet.client_id
        assigned_id = None
        if not client_id:
            if version != MQTT_5 and not packet.clean_start:
                return self.refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, "empty client id with clean session 0")
            if not config.allow_zero_length_clientid:
                return self.refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, "empty client id not allowed")
            client_id = engine.new_client_id()
            if version == MQTT_5:
                assigned_id = client_id
        self.client_id = client_id
        if version == MQTT_5 and P.AUTHENTICATION_METHOD in props:
            return self.refuse(RC.BAD_AUTHENTICATION_METHOD, f"unsupported authentication method {props[P.AUTHENTICATION_METHOD]!r}")
        keepalive = packet.keepalive
        server_keepalive = None
        if config.max_keepalive < 65535 and (keepalive > config.max_keepalive or (keepalive == 0 and version == MQTT_5)):
            if version != MQTT_5:
                return self.refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, f"keepalive {keepalive} above maximum {config.max_keepalive}")
            keepalive = server_keepalive = config.max_keepalive
        self.keepalive = keepalive

        # Session expiry: v3.1.1 persistent sessions never expire; both capped by the config.
        if version == MQTT_5:
            requested_expiry = props.get(P.SESSION_EXPIRY_INTERVAL, 0)
        else:
            requested_expiry = 0 if packet.clean_start else NEVER_EXPIRES
        expiry = requested_expiry
        cap = config.max_session_expiry_interval
        if cap and expiry > cap:
            expiry = cap

        if version == MQTT_5:
            self.send_quota = min(props.get(P.RECEIVE_MAXIMUM, 65535), config.max_inflight_messages)
            self.max_send_packet_size = props.get(P.MAXIMUM_PACKET_SIZE, self.max_send_packet_size)
            self.topic_alias_max_out = props.get(P.TOPIC_ALIAS_MAXIMUM, 0)
            self.problem_information = props.get(P.REQUEST_PROBLEM_INFORMATION, 1) == 1

        # AUTH: who is this client, may it connect? A password check runs off the event loop;
        # until it answers, reading stops and pipelined packets wait in ``held``.
        credentials = Credentials(
            client_id, packet.username, packet.password, self.peer, self.transport.listener,
            self.transport.peer_certificate(),
        )
        decision = engine.auth.authenticate(credentials, assigned_id is not None)
        accept = (packet, assigned_id, server_keepalive, expiry, requested_expiry)
        if isinstance(decision, Decision):
            self._accept_connect(decision, *accept)
            return
        self.state = AUTHENTICATING
        self.transport.pause_reading()
        asyncio.ensure_future(decision).add_done_callback(lambda done: self._authenticated(done, accept))

    def _authenticated(self, done: asyncio.Future[Decision], accept: tuple[Any, ...]) -> None:
        """AUTH: the decision on CONNECT arrived: accept or refuse, then handle what was held."""
        if self.state != AUTHENTICATING:
            return  # closed meanwhile
        try:
            decision = done.result()
        except Exception:
            log.exception("authentication of %s failed", self.client_id)
            decision = Decision(RC.SERVER_UNAVAILABLE, why="authentication failed")
        self.state = CONNECTING
        self.last_received = time.monotonic()  # the keepalive starts now, not before a throttled wait
        held, error = self.held, self.held_error
        self.held, self.held_error = [], None
        self._accept_connect(decision, *accept)
        if self.state == CONNECTED:
            self.transport.resume_reading()
            self.handle_all(held, error)

    def _accept_connect(
        self,
        decision: Decision,
        packet: Connect,
        assigned_id: str | None,
        server_keepalive: int | None,
        expiry: int,
        requested_expiry: int,
    ) -> None:
        engine = self.engine
        config = engine.config
        version = self.version
        client_id = self.client_id
        keepalive = self.keepalive
        if decision.reason_code:
            return self.refuse(decision.reason_code, decision.why)
        self.rights = rights = decision.rights
        if packet.will is not None and rights is not None and not rights.may_publish(packet.will.topic):
            # AUTH: as mosquitto, a will the client could not publish refuses the connection.
            log.warning("Client %s from %s refused: will topic %r not authorised.", client_id, self.peer, packet.will.topic)
            return self.refuse(RC.NOT_AUTHORIZED, "will topic not authorized")

        # Take over an existing connection with the same client id.
        session = engine.sessions.get(client_id)
        if session is not None and session.connection is not None:
            old = session.connection
            log.info("client %s already connected, closing old connection", client_id)
            old.close("session taken over", RC.SESSION_TAKEN_OVER)
            session = engine.sessions.get(client_id)  # a non-persistent one ended with it
        engine.cancel_will(client_id)
        if session is not None and packet.clean_start:
            engine.discard_session(session)
            session = None
        session_present = session is not None
        if session is None:
            session = Session(engine, client_id, expiry, version)
            engine.sessions[client_id] = session
        else:
            session.expiry_interval = expiry
            session.protocol_level = version
        self.session = session
        session.attach(self)
        engine.save_session(session)
        self.will = packet.will
        self.state = CONNECTED

        ack_props: dict = {}
        if version == MQTT_5:
            if config.max_inflight_messages < 65535:
                ack_props[P.RECEIVE_MAXIMUM] = config.max_inflight_messages
            if config.max_topic_alias:
                ack_props[P.TOPIC_ALIAS_MAXIMUM] = config.max_topic_alias
            if config.max_packet_size < 268_435_455:
                ack_props[P.MAXIMUM_PACKET_SIZE] = config.max_packet_size
            if not config.retain_available:
                ack_props[P.RETAIN_AVAILABLE] = 0
            if assigned_id is not None:
                ack_props[P.ASSIGNED_CLIENT_IDENTIFIER] = assigned_id
            if server_keepalive is not None:
                ack_props[P.SERVER_KEEP_ALIVE] = server_keepalive
            if expiry != requested_expiry:
                ack_props[P.SESSION_EXPIRY_INTERVAL] = expiry
        self.protocol_label = {3: "p1", 4: "p2", 5: "p5"}.get(version, f"p{version}")
        username = decision.client.username if decision.client is not None else packet.username
        log.info(
            "New client connected from %s as %s (%s, c%d, k%d%s).",
            self.peer,
            client_id,
            self.protocol_label,
            1 if packet.clean_start else 0,
            keepalive,
            f", u'{username}'" if username else "",
        )
        # Not held for the commit of the session row: after a crash the client would only see
        # session present 0 and subscribe again. A DISCONNECT never comes before the CONNACK.
        self.send(encode(Connack(session_present, 0, ack_props), version))
        if session_present:
            # Deliver what the session kept: in-flight messages first, then its queue, in pages.
            session.loading = True
            session.backlog = True
            session.read_after = 0
            session.start_refill()

    # ---- PUBLISH and its acknowledgements ------------------------------------------------------
    def on_publish(self, packet: Publish) -> None:
        engine = self.engine
        topic = packet.topic
        props = packet.properties
        if self.version == MQTT_5 and props:
            alias = props.get(P.TOPIC_ALIAS)
            if alias is not None:
                if alias > engine.config.max_topic_alias:
                    return self.protocol_violation(f"topic alias {alias} above maximum", RC.TOPIC_ALIAS_INVALID)
                if topic:
                    self.aliases_in[alias] = topic
                else:
                    aliased = self.aliases_in.get(alias)
                    if aliased is None:
                        return self.protocol_violation(f"unknown topic alias {alias}", RC.PROTOCOL_ERROR)
                    topic = aliased
        if not is_valid_topic_name(topic):
            return self.protocol_violation(f"invalid topic name {topic!r}", RC.TOPIC_NAME_INVALID)
        engine.stats.publish_received += 1
        # $SYS holds the broker's own statistics: acknowledged but not routed, as with mosquitto.
        routed = not topic.startswith("$SYS")
        qos = packet.qos
        if packet.retain and not engine.config.retain_available:
            return self.protocol_violation("retain not supported", RC.RETAIN_NOT_SUPPORTED)
        rights = self.rights
        if rights is not None and not rights.may_publish(topic):
            # AUTH: denied. v5: PUBACK/PUBREC 0x87; v3.1.1 has no way to say it: acknowledged
            # and dropped, as mosquitto does. The check runs on the topic an alias stands for.
            log.debug("Denied PUBLISH from %s (q%d, r%d, '%s').", self.client_id, qos, packet.retain, topic)
            if self.version == MQTT_5 and qos:
                ack = Puback if qos == 1 else Pubrec
                return self.send(encode(ack(cast(int, packet.packet_id), RC.NOT_AUTHORIZED), MQTT_5))
            routed = False
        if qos == 0:
            if routed:
                engine.route(message_from_publish(topic, packet.payload, 0, packet.retain, props), self.client_id)
            return
        packet_id = cast(int, packet.packet_id)  # the codec requires a non-zero id when qos > 0
        session = cast(Session, self.session)
        if qos == 2 and packet_id in session.inbound_qos2:
            # Re-sent before PUBREL: already routed once, acknowledge again only.
            self.send_after_commit(encode(Pubrec(packet_id), self.version))
            return
        self.inbound_unacked += 1
        if self.inbound_unacked > engine.config.max_inflight_messages and self.version == MQTT_5:
            return self.protocol_violation("receive maximum exceeded", RC.RECEIVE_MAXIMUM_EXCEEDED)
        matched = (
            engine.route(message_from_publish(topic, packet.payload, qos, packet.retain, props), self.client_id)
            if routed
            else 0
        )
        reason = RC.SUCCESS if matched or self.version != MQTT_5 else RC.NO_MATCHING_SUBSCRIBERS
        if qos == 1:
            self.inbound_unacked -= 1
            if reason == 0:  # the common case, without building a packet object
                self.send_after_commit(b"\x40\x02" + packet_id.to_bytes(2, "big"))
            else:
                self.send_after_commit(encode(Puback(packet_id, reason), self.version))
        else:
            session.inbound_qos2.add(packet_id)
            if session.persistent:
                engine.storage.add_inbound_qos2(self.client_id, packet_id)
                engine.storage_dirty = True
            self.send_after_commit(encode(Pubrec(packet_id, reason), self.version))

    def on_pubrel(self, packet: Pubrel) -> None:
        session = cast(Session, self.session)
        packet_id = packet.packet_id
        if packet_id in session.inbound_qos2:
            session.inbound_qos2.discard(packet_id)
            if self.inbound_unacked > 0:
                self.inbound_unacked -= 1
            if session.persistent:
                self.engine.storage.remove_inbound_qos2(self.client_id, packet_id)
                self.engine.storage_dirty = True
                # The client may reuse the id after PUBCOMP: the removal must be on disk first,
                # or after a crash a new message with this id would be taken for a re-send.
                self.send_after_commit(encode(Pubcomp(packet_id), self.version))
            else:
                self.send(encode(Pubcomp(packet_id), self.version))
        else:
            self.send(encode(Pubcomp(packet_id, RC.PACKET_IDENTIFIER_NOT_FOUND), self.version))

    def on_pubrec(self, packet: Pubrec) -> None:
        if not cast(Session, self.session).on_pubrec(packet.packet_id, packet.reason_code):
            self.send_pubrel(packet.packet_id, RC.PACKET_IDENTIFIER_NOT_FOUND)

    # ---- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------------------
    def on_subscribe(self, packet: Subscribe) -> None:
        engine = self.engine
        session = cast(Session, self.session)
        v5 = self.version == MQTT_5
        sub_ids = packet.properties.get(P.SUBSCRIPTION_IDENTIFIER) if v5 else None
        subscription_id = sub_ids[0] if sub_ids else None
        codes: list[int] = []
        retained_to_send: list[tuple[StoredMessage, int, int | None]] = []
        rights = self.rights
        for topic_filter, options in packet.subscriptions:
            if not is_valid_topic_filter(topic_filter):
                codes.append(RC.TOPIC_FILTER_INVALID if v5 else RC.V3_SUBACK_FAILURE)
                continue
            group, plain_filter = split_shared(topic_filter)
            if group is not None and options.no_local:
                return self.protocol_violation("no local on a shared subscription", RC.PROTOCOL_ERROR)
            if rights is not None and not rights.may_subscribe(plain_filter):
                # AUTH: the filter can match nothing this client may read ($share: its filter).
                log.debug("Denied SUBSCRIBE from %s to '%s'.", self.client_id, topic_filter)
                codes.append(RC.NOT_AUTHORIZED if v5 else RC.V3_SUBACK_FAILURE)
                continue
            qos = options.qos
            is_new = engine.subscribe(session, topic_filter, options, subscription_id)
            codes.append(qos)
            if group is None and (options.retain_handling == 0 or (options.retain_handling == 1 and is_new)):
                for message in engine.retained_for(topic_filter):
                    retained_to_send.append((message, min(qos, message.qos), subscription_id))
        reason = "not authorized" if RC.NOT_AUTHORIZED in codes else invalid_filter_reason
        suback = encode(Suback(packet.packet_id, codes, self.ack_problem(codes, reason)), self.version)
        if session.persistent:
            self.send_after_commit(suback)
        else:
            self.send(suback)
        for message, qos, subscription_id in retained_to_send:
            session.deliver(message, qos, True, [subscription_id] if subscription_id is not None else [])

    def on_unsubscribe(self, packet: Unsubscribe) -> None:
        session = cast(Session, self.session)
        codes = []
        v5 = self.version == MQTT_5
        for topic_filter in packet.topic_filters:
            if not is_valid_topic_filter(topic_filter):
                codes.append(RC.TOPIC_FILTER_INVALID)
            elif self.engine.unsubscribe(session, topic_filter):
                codes.append(RC.SUCCESS)
            else:
                codes.append(RC.NO_SUBSCRIPTION_EXISTED)
        ack = encode(
            Unsuback(packet.packet_id, codes if v5 else [], self.ack_problem(codes, invalid_filter_reason)), self.version
        )
        if session.persistent:
            self.send_after_commit(ack)
        else:
            self.send(ack)

    def ack_problem(self, codes: list[int], reason: str) -> dict:
        """v5 properties of an acknowledgement: a reason string when something failed and the
        client did not turn problem information off (MQTT-3.1.2-29)."""
        if self.version == MQTT_5 and self.problem_information and any(code >= 0x80 for code in codes):
            return {P.REASON_STRING: reason}
        return {}

    # ---- DISCONNECT and closing ----------------------------------------------------------------------
    def on_disconnect(self, packet: Disconnect) -> None:
        session = cast(Session, self.session)
        if self.version == MQTT_5:
            new_expiry = packet.properties.get(P.SESSION_EXPIRY_INTERVAL)
            if new_expiry is not None:
                if session.expiry_interval == 0 and new_expiry != 0:
                    return self.protocol_violation("session expiry set in DISCONNECT after 0 in CONNECT", RC.PROTOCOL_ERROR)
                cap = self.engine.config.max_session_expiry_interval
                session.expiry_interval = min(new_expiry, cap) if cap else new_expiry
                if session.persistent:
                    self.engine.save_session(session)
            if packet.reason_code == RC.DISCONNECT_WITH_WILL:
                self.close("disconnected with will", None)
                return
        self.will = None
        self.disconnected_cleanly = True
        self.close("disconnected", None)

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

    def check_keepalive(self, now: float) -> None:
        if self.state == AUTHENTICATING:
            return  # AUTH: the decision always comes (throttling waits at most a minute)
        if self.state == CONNECTING:
            if now - self.last_received > 30:
                self.close("no CONNECT within 30 s", None)
            return
        if self.keepalive and now - self.last_received > self.keepalive * 1.5:
            self.close("keepalive timeout", RC.KEEP_ALIVE_TIMEOUT)

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
            self._buffer(encode(Disconnect(reason_code, {P.REASON_STRING: why[:200]}), MQTT_5))
            linger = True
        self.close_reason = why
        self.state = CLOSED
        self.closing = True
        self._flush()
        self.closing = False
        self.transport.close(linger)
        self._end(publish_will)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.close_reason = f"connection lost: {exc}" if exc else "closed by client"
            self._end(True)

    def _end(self, publish_will: bool) -> None:
        engine = self.engine
        engine.connections.discard(self)
        session = self.session
        if session is None:
            return
        self.session = None
        if session.connection is not self:
            return
        log.info("Client %s disconnected: %s.", self.client_id, self.close_reason)
        session.detach()
        if self.will is not None and publish_will and not self.disconnected_cleanly:
            # AUTH: the will is checked again when published (rights may have changed on reload).
            engine.schedule_will(self.client_id, self.will, session.expiry_interval, self.rights)
        self.will = None
        if session.persistent:
            engine.save_session(session)
        else:
            engine.discard_session(session)
        engine.commit()
