"""The MQTT 3.1.1 client session without I/O, shared by the blocking and the asyncio client.

Bytes come in through feed(), bytes to send collect in take(), messages go to the
callback. Times are millisecond ticks passed in by the caller, so nothing here
touches a socket or a clock and the protocol can be driven by any loop.

Session holds the whole session state of MQTT 3.1.1 (section 4.1): the outbox
of messages (queued, in flight, awaiting PUBCOMP), the ids of incoming QoS 2
messages, the subscriptions and the requests in flight. It is one class because
a device pays RAM for every class, function and attribute it loads; FilePersist
(persist.py) subclasses it to mirror the outbox to flash through log().

An outbox entry is a list [pid, flags, topic, msg]. flags uses the PUBLISH
header bits (DUP 0x08, QoS 0x06, RETAIN 0x01) plus REL 0x10 (PUBREC received:
only PUBREL and PUBCOMP remain, so the payload is dropped) and SENT 0x20
(written on the current connection). Packet ids are given when a message enters
the outbox, so a retransmission after a reconnect or a reset carries the same id
and the broker can recognise a QoS 2 duplicate. The set of incoming QoS 2 ids
between delivery and PUBREL is what makes receiving exactly once.
"""
from . import packets as P

try:
    from micropython import const
    from time import ticks_diff  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # CPython
    from .compat import const, ticks_diff  # type: ignore[no-redef,assignment,unused-ignore]

_DUP = const(0x08)
_REL = const(0x10)
_SENT = const(0x20)
_PUBACK = const(0x40)
_PUBREC = const(0x50)
_PUBREL = const(0x62)
_PUBCOMP = const(0x70)
_SUBSCRIBE = const(0x82)
_UNSUBSCRIBE = const(0xA2)


class Session:
    def __init__(self, client_id, keepalive=0, maxlen=32, drop_oldest=True, max_inflight=8, max_packet=16384):
        self.client_id = P.to_bytes(client_id)
        self.keepalive = keepalive
        self.q = []  # the outbox, in publish order
        self.inq = set()  # incoming QoS 2 ids delivered, PUBREL not yet received
        self.maxlen = maxlen  # outbox bound (entries holding a payload); 0 = none
        self.drop_oldest = drop_oldest  # when full: drop the oldest unsent, or refuse
        self.dropped = 0
        self.max_inflight = max_inflight
        self.max_packet = max_packet
        self.auth = self.will = self.cb = None  # auth: (user, password or None)
        self.info = False  # callback wants (topic, msg, retained, qos)
        self.subs = {}  # topic -> qos, restored when the broker has no session
        self.acks = {}  # pid -> SUBSCRIBE/UNSUBSCRIBE packet awaiting its ack
        self.done = {}  # pid -> SUBACK code (UNSUBACK: 0) until the waiter takes it
        self.later = []  # (topic, qos) requests made while offline
        self.pid = 0
        self.up = self.present = False
        self.clean = True
        self.out = self.rx = b""  # out: bytes for the wire; rx: an incomplete packet
        self.count = 0  # packets processed: lets callers wait for "one more"
        self.op = None  # type byte of the last packet processed
        self.last_tx = 0
        self.ping_at = None

    # -- the outbox -------------------------------------------------------

    def find(self, pid):
        for e in self.q:
            if e[0] == pid:
                return e
        return None

    def remove(self, e):
        q = self.q
        for i in range(len(q)):
            if q[i] is e:
                del q[i]
                self.log(b"-", e)
                return

    def incoming(self, pid, pending):
        """An incoming QoS 2 id: pending=True once delivered, False on PUBREL."""
        if pending:
            self.inq.add(pid)
            self.log(b"I", (pid,))
        elif pid in self.inq:
            self.inq.discard(pid)
            self.log(b"i", (pid,))

    def log(self, kind, e):
        """A change to the outbox or the incoming ids; FilePersist writes it to flash."""

    # -- connection life --------------------------------------------------

    def start(self, clean, now):
        """Queue CONNECT for a fresh connection. Nothing is on this wire yet: what
        an earlier connection sent goes again, QoS 1/2 publishes with DUP."""
        self.clean = clean
        self.up = False
        self.rx = b""
        self.ping_at = None
        self.last_tx = now
        self.out = P.connect(self.client_id, clean, self.keepalive, self.auth, self.will)
        for e in self.q:
            f = e[1]
            if f & _SENT:
                e[1] = f & ~_SENT | (_DUP if f & 6 and not f & _REL else 0)

    def take(self, now):
        """Bytes the I/O layer must write now, with a PINGREQ after keepalive/2 of
        silence. Raises MQTTException when a PINGRESP is overdue: the link is dead."""
        if self.up and self.keepalive:
            ka = self.keepalive * 1000
            if self.ping_at is not None:
                if ticks_diff(now, self.ping_at) > ka:
                    raise P.MQTTException("keepalive: no PINGRESP")
            elif ticks_diff(now, self.last_tx) >= ka // 2:
                self.out += b"\xc0\x00"
                self.ping_at = now
        d = self.out
        if d:
            self.out = b""
            self.last_tx = now
        return d

    # -- outgoing ---------------------------------------------------------

    def new_pid(self):
        while True:
            self.pid = self.pid % 65535 + 1
            if self.pid not in self.acks and self.find(self.pid) is None:
                return self.pid

    def publish(self, topic, msg, retain=False, qos=0):
        """QoS 0 goes straight out when nothing waits before it; everything else waits
        in the outbox until acknowledged. False when a full outbox refused it."""
        if not 0 <= qos <= 2:
            raise ValueError("qos")
        topic = P.to_bytes(topic)
        msg = P.to_bytes(msg)
        flags = qos << 1 | (1 if retain else 0)
        q = self.q
        full = 0
        victim = None
        for e in q:
            if not e[1] & _REL:  # REL entries hold no payload and do not count
                full += 1
            if victim is None and not e[1] & (_REL | _SENT):
                victim = e
        if not qos and self.up and victim is None:
            self.out += P.publish(flags, 0, topic, msg)
            return True
        if self.maxlen and full >= self.maxlen:
            if victim is None or not self.drop_oldest:
                return False
            self.remove(victim)
            self.dropped += 1
        e = [self.new_pid() if qos else 0, flags, topic, msg]
        q.append(e)
        self.log(b"+", e)
        self.pump()
        return True

    def pump(self):
        """Send what the outbox may send now, in order, within the in-flight window."""
        if not self.up:
            return
        q = self.q
        n = 0
        for e in q:
            if e[1] & _SENT and e[1] & 6:
                n += 1
        i = 0
        while i < len(q):
            e = q[i]
            f = e[1]
            if not f & _SENT:
                if f & _REL:
                    self.out += P.ack(_PUBREL, e[0])
                elif f & 6:
                    if n >= self.max_inflight:
                        break
                    self.out += P.publish(f, e[0], e[2], e[3])
                    n += 1
                else:
                    self.out += P.publish(f, 0, e[2], e[3])
                    self.remove(e)  # QoS 0: once written it is gone
                    continue
                e[1] = f | _SENT
            i += 1

    def subscription(self, topic, qos):
        """Subscribe (qos 0-2) or unsubscribe (qos None). Returns the request's pid,
        or None offline: the request then waits for the connection."""
        topic = P.to_bytes(topic)
        if qos is None:
            self.subs.pop(topic, None)
        else:
            self.subs[topic] = qos
        if not self.up:
            self.later.append((topic, qos))
            return None
        pid = self.new_pid()
        pkt = self.acks[pid] = P.request(_UNSUBSCRIBE if qos is None else _SUBSCRIBE, pid, topic, qos)
        self.out += pkt
        return pid

    # -- incoming ---------------------------------------------------------

    def feed(self, data):
        """Take received bytes and process every complete packet; returns how many."""
        buf = self.rx + data if self.rx else data
        done = 0
        while True:
            f = P.frame(buf)
            if f is None:
                if len(buf) > self.max_packet + 5:
                    raise P.MQTTException("packet exceeds max_packet")
                break
            first, start, end = f
            body = buf[start:end]
            buf = self.rx = buf[end:]  # consumed first: a raising callback cannot replay it
            self.count += 1
            self.op = first
            self._dispatch(first, body)
            done += 1
        self.rx = buf
        return done

    def _dispatch(self, first, body):
        kind = first & 0xF0
        if kind == 0x30:  # PUBLISH
            tl = body[0] << 8 | body[1]
            topic = bytes(body[2 : 2 + tl])
            qos = first >> 1 & 3
            if qos:
                pid = body[2 + tl] << 8 | body[3 + tl]
                tl += 2
            msg = bytes(body[2 + tl :])
            if qos < 2 or pid not in self.inq:  # a resent QoS 2 PUBLISH before PUBREL is not delivered twice
                cb = self.cb
                if cb is not None:
                    if self.info:
                        cb(topic, msg, bool(first & 1), qos)
                    else:
                        cb(topic, msg)
                if qos == 2:
                    self.incoming(pid, True)
            if qos:
                self.out += P.ack(_PUBACK if qos == 1 else _PUBREC, pid)
            return
        if kind == 0x20:  # CONNACK
            if len(body) < 2:
                raise P.MQTTException("bad CONNACK")
            if body[1]:
                raise P.MQTTException(body[1])
            self.present = present = bool(body[0] & 1) and not self.clean
            self.up = True
            self.done = {}
            if present:
                for pid in self.acks:
                    self.out += self.acks[pid]  # requests the old connection left unanswered
                for r in self.later:
                    self.subscription(r[0], r[1])
            else:
                # The broker has no session: PUBREL-pending messages and incoming QoS 2
                # ids mean nothing to it now, and every subscription must be made again.
                i = 0
                while i < len(self.q):
                    e = self.q[i]
                    if e[1] & _REL:
                        self.remove(e)
                    else:
                        i += 1
                for pid in list(self.inq):
                    self.incoming(pid, False)
                self.acks = {}
                for topic in self.subs:
                    self.subscription(topic, self.subs[topic])
            self.later = []
            self.pump()
            return
        if kind == 0xD0:  # PINGRESP
            self.ping_at = None
            return
        if len(body) < 2:
            raise P.MQTTException("bad packet 0x%02x" % first)
        pid = body[0] << 8 | body[1]
        if kind == 0x60:  # PUBREL
            self.incoming(pid, False)
            self.out += P.ack(_PUBCOMP, pid)
            return
        e = self.find(pid)
        if kind == _PUBACK or kind == _PUBCOMP:
            if e is not None and (e[1] & _REL) == (kind == _PUBCOMP) * _REL:
                self.remove(e)
        elif kind == _PUBREC:
            if e is not None and e[1] & 6 == 4 and not e[1] & _REL:
                # the broker owns the message now: keep only the id; PUBREL goes out below
                e[1] = e[1] & 6 | _REL | _SENT
                e[3] = b""
                self.log(b"+", e)
            self.out += P.ack(_PUBREL, pid)  # also for an unknown id, so the broker can finish
        elif kind == 0x90 or kind == 0xB0:  # SUBACK, UNSUBACK
            if self.acks.pop(pid, None) is not None:
                self.done[pid] = body[2] if kind == 0x90 and len(body) > 2 else 0
        else:
            raise P.MQTTException("unexpected packet 0x%02x" % first)
        self.pump()
