"""The whole life of a session in one place: create, resume, take over, end, expire, wills.

A connection asks for a session when its CONNECT is accepted (``open``) and hands it
back when it closes (``close``); the engine's tick calls ``expire`` and
``publish_due_wills``. Nothing else creates, resumes or discards sessions, so every
way a message can reach a session that is attaching, loading, detaching or being
taken over goes through the few methods below.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from broker.core.session import Outlet, Session
from broker.protocol import properties as P
from broker.protocol import reason_codes as RC
from broker.protocol.packets import Will
from broker.message import Message
from broker.storage.base import NEVER_EXPIRES, SessionRecord

if TYPE_CHECKING:
    from broker.auth.access import ClientRights
    from broker.core.engine import Engine

log = logging.getLogger("broker")


def message_from_publish(topic: str, payload: bytes, qos: int, retain: bool, properties: dict) -> Message:
    """Build the stored form of an incoming PUBLISH or will (expiry made absolute)."""
    if not properties:
        return Message(topic, payload, qos, retain, {}, None)
    forwarded = {k: v for k, v in properties.items() if k in FORWARDED_PROPERTIES}
    expires_at = None
    interval = properties.get(P.MESSAGE_EXPIRY_INTERVAL)
    if interval is not None:
        expires_at = time.time() + interval
    return Message(topic, payload, qos, retain, forwarded, expires_at)


# Properties of a PUBLISH that travel with the message to subscribers.
FORWARDED_PROPERTIES = (
    P.PAYLOAD_FORMAT_INDICATOR,
    P.CONTENT_TYPE,
    P.RESPONSE_TOPIC,
    P.CORRELATION_DATA,
    P.USER_PROPERTY,
)


class PendingWill:
    __slots__ = ("due", "message", "client_id", "rights")

    def __init__(self, due: float, message: Message, client_id: str, rights: ClientRights | None = None) -> None:
        self.due = due
        self.message = message
        self.client_id = client_id
        self.rights = rights  # AUTH: checked again when published; None after a restart (checked when scheduled)


class SessionLifecycle:
    """Creates, resumes, takes over, ends and expires the engine's sessions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pending_wills: dict[str, PendingWill] = {}
        self._next_auto_id = 0

    # ---- start-up ----------------------------------------------------------------------
    def load(self, records: list[SessionRecord], wills: list[tuple[str, Message, float]], now: float) -> None:
        """Sessions and pending wills from storage; sessions that expired while down end."""
        engine = self.engine
        for record in records:
            session = Session(engine, record.client_id, record.expiry_interval, record.protocol_level)
            # A session that was online when the broker stopped counts as disconnected now.
            session.disconnected_at = record.disconnected_at if record.disconnected_at is not None else now
            if record.inbound_qos2:
                session.inbound_qos2 = set(record.inbound_qos2)
            session.queued_count = record.queued_count
            session.queued_bytes = record.queued_bytes
            session.last_seq = record.last_seq
            session.stored = True
            session.backlog = True
            if record.queued_count:
                session.earliest_expiry = now  # unknown: the first tick scans the queue once
            for sub in record.subscriptions:
                problem = engine.topic_limits.filter_problem(sub.topic_filter)
                if problem is not None:  # stored before a limit was lowered: never fatal
                    log.warning("skipping a stored subscription of %s: %s", record.client_id, problem)
                    continue
                engine.add_subscription(session, sub.topic_filter, sub.options, sub.subscription_id)
            engine.sessions[session.client_id] = session
            self._schedule_expiry(session)
        for client_id, message, due in wills:
            self.pending_wills[client_id] = PendingWill(due, message, client_id)
            engine.will_timers.schedule(client_id, due)
        self.expire(now)
        self.publish_due_wills(now)

    # ---- a connection's CONNECT accepted ---------------------------------------------------
    def new_client_id(self) -> str:
        self._next_auto_id += 1
        return f"auto-{time.monotonic_ns():x}-{self._next_auto_id}"

    def takeover_refused(self, client_id: str) -> bool:
        """A CONNECT for this client id would take over a connected session of an id that
        flaps beyond ``max_takeovers_per_minute``: refuse it (see ``takeovers.py``)."""
        session = self.engine.sessions.get(client_id)
        return session is not None and session.connection is not None and self.engine.takeovers.refused(client_id)

    def open(self, outlet: Outlet, client_id: str, clean_start: bool, expiry: int, version: int) -> tuple[Session, bool]:
        """Attach ``outlet`` to the client's session: taken over, discarded, resumed or new.

        Returns the session and whether it was present (CONNACK's session present flag).
        The caller sends CONNACK, then calls ``start_delivery``.
        """
        engine = self.engine
        session = engine.sessions.get(client_id)
        if session is not None and session.connection is not None:
            old = session.connection
            line = engine.takeovers.taken_over(client_id, old.peer, outlet.peer)
            if line is not None:
                log.info("%s", line)
            old.close("session taken over", RC.SESSION_TAKEN_OVER)
            session = engine.sessions.get(client_id)  # a non-persistent one ended with it
        self.cancel_will(client_id)
        if session is not None and clean_start:
            self.discard(session)
            session = None
        present = session is not None
        if session is None:
            session = Session(engine, client_id, expiry, version)
            engine.sessions[client_id] = session
        else:
            session.expiry_interval = expiry
            session.protocol_level = version
        session.attach(outlet)
        self.save(session)
        return session, present

    def start_delivery(self, session: Session, present: bool) -> None:
        """After CONNACK: a resumed session sends its in-flight messages, then its queue.

        Until the stored queue is read (``loading``), messages routed to the session queue
        in storage behind it (see ``Session.deliver``), whatever its expiry.
        """
        if present:
            session.begin_loading()

    # ---- a connection closed ------------------------------------------------------------------
    def close(self, outlet: Outlet, session: Session, will: Will | None, rights: ClientRights | None = None) -> None:
        """The connection ``outlet`` of ``session`` ended; ``will`` is published if given
        (and if ``rights``, the connection's ACL, still allow it)."""
        if session.connection is not outlet:
            return  # taken over: the new connection owns the session now
        session.detach()
        if will is not None:
            self.schedule_will(session.client_id, will, session.expiry_interval, rights)
        if session.persistent:
            self.save(session)
        else:
            self.discard(session)
        self.engine.commit()

    def set_expiry(self, session: Session, expiry: int) -> None:
        """A v5 DISCONNECT changed the session expiry interval (capped by the config)."""
        cap = self.engine.config.max_session_expiry_interval
        session.expiry_interval = min(expiry, cap) if cap else expiry
        self.save(session)

    # ---- storage of the session row -------------------------------------------------------------
    def save(self, session: Session) -> None:
        if session.persistent:
            self._schedule_expiry(session)
            session.stored = True
            self.engine.storage.save_session(
                SessionRecord(
                    session.client_id, session.expiry_interval, session.protocol_level, session.disconnected_at
                )
            )

    def discard(self, session: Session) -> None:
        """End a session: its subscriptions, queue and stored state go away."""
        engine = self.engine
        engine.remove_subscriptions(session)
        engine.expiry_timers.cancel(session)
        engine.purge_timers.cancel(session)
        if engine.sessions.get(session.client_id) is session:
            del engine.sessions[session.client_id]
        if session.stored:
            engine.storage.delete_session(session.client_id)

    def _schedule_expiry(self, session: Session) -> None:
        """An offline persistent session ends at disconnected_at + expiry_interval."""
        if session.connection is None and session.disconnected_at is not None:
            if session.expiry_interval != NEVER_EXPIRES:
                self.engine.expiry_timers.schedule(session, session.disconnected_at + session.expiry_interval)

    def expire(self, now: float) -> None:
        """End the offline sessions whose expiry interval has passed (only those due: timers.py)."""
        engine = self.engine
        for session in engine.expiry_timers.due(now):
            if engine.sessions.get(session.client_id) is not session or not session.expired(now):
                continue  # ended already, or back online (its next disconnect schedules it again)
            log.info("session %s expired", session.client_id)
            will = self.pending_wills.get(session.client_id)
            if will is not None:
                self._publish_will(will)  # the session ends before the will's delay
            self.discard(session)

    # ---- wills ----------------------------------------------------------------------------------
    def schedule_will(
        self, client_id: str, will: Will, session_expiry: int, rights: ClientRights | None = None
    ) -> None:
        """Publish a will now, or after its v5 delay (or when the session ends, if sooner)."""
        message = message_from_publish(will.topic, will.payload, will.qos, will.retain, will.properties)
        delay = will.properties.get(P.WILL_DELAY_INTERVAL, 0) if will.properties else 0
        delay = min(delay, session_expiry)
        if rights is not None and not rights.may_publish(will.topic):
            log.info("will of %s on %r not published: not authorised", client_id, will.topic)  # AUTH
            return
        if delay <= 0:
            self.engine.route(message, None)
        else:
            due = time.time() + delay
            self.pending_wills[client_id] = PendingWill(due, message, client_id, rights)
            self.engine.will_timers.schedule(client_id, due)
            # Kept in storage: a restart within the delay must not lose it.
            self.engine.storage.save_will(client_id, message, due)

    def cancel_will(self, client_id: str) -> None:
        if self.pending_wills.pop(client_id, None) is not None:
            self.engine.will_timers.cancel(client_id)
            self.engine.storage.delete_will(client_id)

    def _publish_will(self, will: PendingWill) -> None:
        del self.pending_wills[will.client_id]
        self.engine.will_timers.cancel(will.client_id)
        self.engine.storage.delete_will(will.client_id)
        if will.rights is not None and not will.rights.may_publish(will.message.topic):
            log.info("will of %s on %r not published: not authorised", will.client_id, will.message.topic)  # AUTH
            return
        self.engine.route(will.message, None)

    def publish_due_wills(self, now: float) -> None:
        for client_id in self.engine.will_timers.due(now):
            will = self.pending_wills.get(client_id)
            if will is not None:
                self._publish_will(will)
