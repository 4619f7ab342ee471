"""CONNECT: client id, keepalive, session expiry, the v5 limits of both sides, CONNACK."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from broker.auth.access import Decision
from broker.auth.base import Credentials
from broker.core.aliases import OutboundAliases
from broker.core.states import AUTHENTICATING, CONNECTED
from broker.protocol import properties as P
from broker.protocol import reason_codes as RC
from broker.protocol.packets import MQTT_5, Connack, Connect
from broker.storage.base import NEVER_EXPIRES

if TYPE_CHECKING:
    from broker.core.connection import Connection

log = logging.getLogger("broker")

PROTOCOL_LABELS = {3: "p1", 4: "p2", 5: "p5"}  # as mosquitto logs the protocol version


def handle_connect(conn: Connection, packet: Connect) -> None:
    engine = conn.engine
    config = engine.config
    conn.version = version = packet.protocol_level
    props = packet.properties
    if conn.refusal is not None:  # over a connection limit (server/admission.py)
        return conn.refuse(RC.CONNECTION_RATE_EXCEEDED, conn.refusal)
    if config.server_reference and version == MQTT_5:
        code = RC.SERVER_MOVED if config.server_reference_mode == "moved" else RC.USE_ANOTHER_SERVER
        return conn.refuse(code, "use another server", {P.SERVER_REFERENCE: config.server_reference})
    if config.server_reference:
        return conn.refuse(RC.SERVER_UNAVAILABLE, f"use another server: {config.server_reference}")
    client_id = packet.client_id
    assigned_id = None
    if not client_id:
        if version != MQTT_5 and not packet.clean_start:
            return conn.refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, "empty client id with clean session 0")
        if not config.allow_zero_length_clientid:
            return conn.refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, "empty client id not allowed")
        client_id = engine.lifecycle.new_client_id()
        if version == MQTT_5:
            assigned_id = client_id
    conn.client_id = client_id
    conn.username = packet.username
    if client_id in engine.bridge_client_ids and conn.transport.listener.protocol != "bridge":
        # The session of a bridge is its store-and-forward backlog: no device may take it over.
        return conn.refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, f"client id {client_id!r} is reserved for a bridge")
    if version == MQTT_5 and P.AUTHENTICATION_METHOD in props:
        return conn.refuse(
            RC.BAD_AUTHENTICATION_METHOD, f"unsupported authentication method {props[P.AUTHENTICATION_METHOD]!r}"
        )
    keepalive = packet.keepalive
    server_keepalive = None
    if config.max_keepalive < 65535 and (keepalive > config.max_keepalive or (keepalive == 0 and version == MQTT_5)):
        if version != MQTT_5:
            return conn.refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, f"keepalive {keepalive} above maximum {config.max_keepalive}")
        keepalive = server_keepalive = config.max_keepalive
    conn.keepalive = keepalive
    conn.schedule_keepalive()

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
        conn.send_quota = min(props.get(P.RECEIVE_MAXIMUM, 65535), config.max_inflight_messages)
        conn.max_send_packet_size = props.get(P.MAXIMUM_PACKET_SIZE, conn.max_send_packet_size)
        alias_maximum = props.get(P.TOPIC_ALIAS_MAXIMUM, 0)  # of the client: aliases we may send
        if alias_maximum:
            conn.aliases_out = OutboundAliases(alias_maximum)
        conn.problem_information = props.get(P.REQUEST_PROBLEM_INFORMATION, 1) == 1

    # AUTH: who is this client, may it connect? A password check runs off the event loop;
    # until it answers, the connection stops reading and holds pipelined packets.
    transport = conn.transport
    credentials = Credentials(
        client_id, packet.username, packet.password, conn.peer, transport.listener, transport.peer_certificate()
    )
    decision = engine.auth.authenticate(credentials, assigned_id is not None)
    accept = partial(accept_connect, conn, packet, assigned_id, server_keepalive, expiry, requested_expiry)
    if isinstance(decision, Decision):
        accept(decision)
        return
    conn.wait_for_authentication()
    asyncio.ensure_future(decision).add_done_callback(lambda done: _authenticated(conn, done, accept))


def _authenticated(conn: Connection, done: asyncio.Future[Decision], accept: Callable[[Decision], None]) -> None:
    """AUTH: the decision arrived: accept or refuse, then handle the held packets in order."""
    if conn.state != AUTHENTICATING:
        return  # closed meanwhile
    try:
        decision = done.result()
    except Exception:
        log.exception("authentication of %s failed", conn.client_id)
        decision = Decision(RC.SERVER_UNAVAILABLE, why="authentication failed")
    held, error = conn.authenticated()
    accept(decision)
    if conn.state == CONNECTED:
        conn.resume(held, error)


def accept_connect(
    conn: Connection,
    packet: Connect,
    assigned_id: str | None,
    server_keepalive: int | None,
    expiry: int,
    requested_expiry: int,
    decision: Decision,
) -> None:
    """The rest of CONNECT once authenticated: the session, CONNACK, delivery."""
    if decision.reason_code:
        return conn.refuse(decision.reason_code, decision.why)
    engine = conn.engine
    config = engine.config
    version = conn.version
    client_id = conn.client_id
    keepalive = conn.keepalive
    props = packet.properties
    conn.rights = rights = decision.rights
    if decision.client is not None and decision.client.username is not None:
        conn.username = decision.client.username  # the verified identity (certificate CN, ...)
    if packet.will is not None and rights is not None and not rights.may_publish(packet.will.topic):
        # AUTH: as mosquitto, a will the client could not publish refuses the connection.
        log.warning("Client %s from %s refused: will topic %r not authorised.", client_id, conn.peer, packet.will.topic)
        return conn.refuse(RC.NOT_AUTHORIZED, "will topic not authorized")

    if engine.lifecycle.takeover_refused(client_id):
        return conn.refuse(RC.CONNECTION_RATE_EXCEEDED, "client id taken over too often (max_takeovers_per_minute)")
    session, session_present = engine.lifecycle.open(conn, client_id, packet.clean_start, expiry, version)
    conn.session = session
    conn.will = packet.will
    conn.state = CONNECTED

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
        if props.get(P.REQUEST_RESPONSE_INFORMATION) == 1:
            ack_props[P.RESPONSE_INFORMATION] = response_information(config.response_information, client_id)
    log.info(
        "New client connected from %s as %s (%s, c%d, k%d%s).",
        conn.peer,
        client_id,
        PROTOCOL_LABELS.get(version, f"p{version}"),
        1 if packet.clean_start else 0,
        keepalive,
        f", u'{conn.username}'" if conn.username else "",
    )
    engine.stats.connects += 1
    # Not held for the commit of the session row: after a crash the client would only see
    # session present 0 and subscribe again. A DISCONNECT never comes before the CONNACK.
    conn.send_packet(Connack(session_present, 0, ack_props))
    engine.lifecycle.start_delivery(session, session_present)


def response_information(prefix: str, client_id: str) -> str:
    """The v5 Response Information: the configured prefix with %c as the client id."""
    return prefix.replace("%c", client_id)
