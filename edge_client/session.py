"""The MQTT 3.1.1 client session without I/O, shared by the blocking and the asyncio client.

Bytes come in through room()/received(n) (read straight into the session's
buffer) or feed(data); bytes to send come out of take(now); messages go to the
callback. Times are millisecond ticks passed in by the caller, so nothing here
touches a socket or a clock and the protocol can be driven by any loop.

Memory is bounded and allocated up front, because a device with a 64 KB heap
dies of fragmentation long before it runs out of bytes: one receive buffer and
one send buffer of `bufsize` bytes each, reused for every packet. A packet
larger than the receive buffer (up to max_packet) gets one buffer of exactly its
size while it is read; a payload larger than the send buffer is written after
its header without being copied. Nothing grows with the backlog while reading.

Session holds the whole session state of MQTT 3.1.1 (section 4.1): the outbox
of messages (queued, in flight, awaiting PUBCOMP), the ids of incoming QoS 2
messages, the subscriptions and the requests in flight. It is one class because
a device pays RAM for every class, function and attribute it loads; FilePersist
(persist.py) subclasses it to keep the outbox on flash with only its head in RAM.

An outbox entry is a list [pid, flags, topic, msg] (FilePersist adds the place
of its record in the file). flags uses the PUBLISH header bits (DUP 0x08, QoS
0x06, RETAIN 0x01) plus REL 0x10 (PUBREC received: only PUBREL and PUBCOMP
remain, so the payload is dropped) and SENT 0x20 (written on the current
connection). Packet ids are given when a message enters the outbox, so a
retransmission after a reconnect or a reset carries the same id and the broker
can recognise a QoS 2 duplicate. The set of incoming QoS 2 ids between delivery
and PUBREL is what makes receiving exactly once.
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
    def __init__(
        self, client_id, keepalive=0, maxlen=32, drop_oldest=True, max_inflight=8, max_packet=16384, bufsize=1024
    ):
        self.client_id = P.to_bytes(client_id)
        self.keepalive = keepalive
        self.q = []  # the outbox (FilePersist: its head), in publish order
        self.more = 0  # entries beyond q (FilePersist: on flash only)
        self.inq = set()  # incoming QoS 2 ids delivered, PUBREL not yet received
        self.maxlen = maxlen  # outbox bound (entries holding a payload); 0 = none
        self.drop_oldest = drop_oldest  # when full: drop the oldest unsent, or refuse
        self.dropped = 0  # messages dropped from a full outbox
        self.lost = 0  # incoming packets dropped for want of memory
        self.max_inflight = max_inflight
        self.max_packet = max_packet
        self.auth = self.will = self.cb = None  # auth: (user, password or None)
        self.info = False  # callback wants (topic, msg, retained, qos)
        self.failed = None  # the last exception the callback raised
        self.subs = {}  # topic -> qos, restored when the broker has no session
        self.acks = {}  # pid -> SUBSCRIBE/UNSUBSCRIBE packet awaiting its ack
        self.done = {}  # pid -> SUBACK code (UNSUBACK: 0) until the waiter takes it
        self.later = []  # (topic, qos) requests made while offline
        self.pid = 0
        self.up = self.present = False
        self.clean = True
        self.rb = bytearray(bufsize)  # received bytes not yet processed: rb[:rn]
        self.rv = memoryview(self.rb)
        self.tb = bytearray(bufsize)  # bytes for the wire: tb[:tn], then tail
        self.tv = memoryview(self.tb)
        self.count = 0  # packets processed: lets callers wait for "one more"
        self.op = None  # type byte of the last packet processed
        self.last_tx = 0
        self._reset()

    def _reset(self):
        self.rn = self.tn = 0
        self.big = None  # one packet larger than rb, while it is read
        self.bn = 0  # bytes of it read so far
        self.skip = 0  # bytes still to discard of a packet there was no memory for
        self.tail = None  # a payload larger than tb, written after tb[:tn]
        self.spill = []  # earlier output when tb was full (rare: control packets only)
        self.ping_at = None

    # -- the outbox -------------------------------------------------------

    def find(self, pid):
        for e in self.q:
            if e[0] == pid:
                return e
        return None

    def pending(self):
        return len(self.q) + self.more

    def add(self, e):
        self.q.append(e)

    def remove(self, e):
        q = self.q
        for i in range(len(q)):
            if q[i] is e:
                del q[i]
                self.log(b"-", e)
                return

    def drop(self):
        """Make room in a full outbox: drop the oldest message not written yet."""
        for e in self.q:
            if not e[1] & (_REL | _SENT):
                self.remove(e)
                return True
        return False

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
        self._reset()
        self.last_tx = now
        self.raw(P.connect(self.client_id, clean, self.keepalive, self.auth, self.will))
        for e in self.q:
            f = e[1]
            if f & _SENT:
                e[1] = f & ~_SENT | (_DUP if f & 6 and not f & _REL else 0)

    def take(self, now):
        """The buffers to write now, in order (a PINGREQ after keepalive/2 of
        silence; as many queued publishes as fit). They stay valid until the next
        call into the session: write them first. Raises MQTTException when a
        PINGRESP is overdue: the link is dead."""
        if self.up:
            if self.keepalive:
                ka = self.keepalive * 1000
                if self.ping_at is not None:
                    if ticks_diff(now, self.ping_at) > ka:
                        raise P.MQTTException("keepalive: no PINGRESP")
                elif ticks_diff(now, self.last_tx) >= ka // 2:
                    self.ctl(0xC0, -1)
                    self.ping_at = now
            self.pump()
        out = self.spill
        if out:
            self.spill = []
        else:
            out = []
        if self.tn:
            out.append(self.tv[: self.tn])
            self.tn = 0
        if self.tail is not None:
            out.append(self.tail)
            self.tail = None
        if out:
            self.last_tx = now
        return out

    # -- writing into the send buffer -------------------------------------

    def _free(self):
        return -1 if self.tail is not None else len(self.tb) - self.tn

    def _spill(self):
        if self.tn:
            self.spill.append(bytes(self.tv[: self.tn]))
            self.tn = 0
        if self.tail is not None:
            self.spill.append(self.tail)
            self.tail = None

    def raw(self, b):
        """Queue a whole packet; never fails (the buffer spills when full)."""
        n = len(b)
        if self._free() < n:
            self._spill()
            if n > len(self.tb):
                self.spill.append(b)
                return
        self.tv[self.tn : self.tn + n] = b
        self.tn += n

    def ctl(self, kind, pid):
        """A two- or four-byte control packet (pid -1: no packet id), without allocating."""
        if self._free() < 4:
            self._spill()
        tb = self.tb
        i = self.tn
        tb[i] = kind
        if pid < 0:
            tb[i + 1] = 0
            self.tn = i + 2
        else:
            tb[i + 1] = 2
            tb[i + 2] = pid >> 8
            tb[i + 3] = pid & 0xFF
            self.tn = i + 4

    def _pub(self, flags, pid, topic, msg):
        """Write a PUBLISH if it fits now; the payload goes by reference when it is
        larger than the whole buffer. False: nothing written, try after the next take()."""
        tl = len(topic)
        ml = len(msg)
        n = 2 + tl + (2 if flags & 6 else 0)  # variable header
        free = self._free()
        if free < n + ml + 5:
            if self.tn or free < n + 5:
                return False
        else:
            ml = -1  # the payload is copied too
        tb = self.tb
        i = self.tn
        tb[i] = 0x30 | flags & 0x0F
        i += 1
        r = n + len(msg)
        while r > 0x7F:
            tb[i] = r & 0x7F | 0x80
            r >>= 7
            i += 1
        tb[i] = r
        tb[i + 1] = tl >> 8
        tb[i + 2] = tl & 0xFF
        i += 3
        self.tv[i : i + tl] = topic
        i += tl
        if flags & 6:
            tb[i] = pid >> 8
            tb[i + 1] = pid & 0xFF
            i += 2
        if ml < 0:
            ml = len(msg)
            self.tv[i : i + ml] = msg
            i += ml
        else:
            self.tail = msg
        self.tn = i
        return True

    # -- outgoing ---------------------------------------------------------

    def new_pid(self):
        while True:
            self.pid = self.pid % 65535 + 1
            if self.pid not in self.acks and self.find(self.pid) is None:
                return self.pid

    def full(self):
        if not self.maxlen:
            return False
        n = self.more
        for e in self.q:
            if not e[1] & _REL:  # REL entries hold no payload and do not count
                n += 1
        return n >= self.maxlen

    def publish(self, topic, msg, retain=False, qos=0, drop=None):
        """QoS 0 goes straight into the send buffer when nothing waits before it;
        everything else waits in the outbox until acknowledged. False when a full
        outbox refused it (drop, default drop_oldest, is False, or nothing is left
        to drop)."""
        if not 0 <= qos <= 2:
            raise ValueError("qos")
        topic = P.to_bytes(topic)
        if len(topic) + 9 > len(self.tb):
            raise ValueError("topic longer than the send buffer")
        msg = P.to_bytes(msg)
        flags = qos << 1 | (1 if retain else 0)
        if not qos and self.up and not self.more:
            for e in self.q:
                if not e[1] & (_REL | _SENT):
                    break
            else:
                if self._pub(flags, 0, topic, msg):
                    return True
        if self.full():
            if not (self.drop_oldest if drop is None else drop) or not self.drop():
                return False
            self.dropped += 1
        self.add([self.new_pid() if qos else 0, flags, topic, msg])
        return True

    def pump(self):
        """Write what the outbox may send now, in order, within the in-flight window
        and the room in the send buffer."""
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
                    self.ctl(_PUBREL, e[0])
                elif f & 6:
                    if n >= self.max_inflight or not self._pub(f, e[0], e[2], e[3]):
                        break
                    n += 1
                else:
                    if not self._pub(f, 0, e[2], e[3]):
                        break
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
        self.raw(pkt)
        return pid

    # -- incoming ---------------------------------------------------------

    def room(self):
        """Where the next received bytes go: read into it, then call received(n)."""
        if self.big is not None:
            return memoryview(self.big)[self.bn :]
        if self.skip:
            return self.rv[: min(self.skip, len(self.rb))]
        return self.rv[self.rn :]

    def received(self, n):
        """n bytes were read into room(): process every complete packet. A callback
        exception is raised again once the rest is processed and acknowledged."""
        self.failed = None
        if self.skip:
            self.skip -= n
        elif self.big is not None:
            self.bn += n
            if self.bn == len(self.big):
                b = self.big
                self.big = None
                self._one(b, 0, len(b))
        else:
            self.rn += n
            self._process()
        if self.failed is not None:
            raise self.failed

    def feed(self, data):
        """Take received bytes from a caller that has them already (asyncio, tests)."""
        data = memoryview(data)
        err = None
        while True:
            r = self.room()
            k = min(len(r), len(data))
            r[:k] = data[:k]
            data = data[k:]
            try:
                self.received(k)
            except Exception as e:
                if e is not self.failed:
                    raise
                err = err or e
            if not len(data):
                break
        if err is not None:
            self.failed = err
            raise err

    def _process(self):
        rb = self.rb
        rn = self.rn
        pos = 0
        try:
            while pos < rn:
                f = P.frame(rb, pos, rn)
                if f is None:
                    break
                first, start, end = f
                if end - start > self.max_packet:
                    raise P.MQTTException("packet exceeds max_packet")
                if end > rn:
                    if end - pos > len(rb):
                        self._oversize(first, pos, start, end, rn)
                        pos = rn
                    break
                p = pos
                pos = end  # consumed first: a raising callback cannot replay it
                self._one(rb, p, end, first, start)
        finally:
            rem = rn - pos
            if rem and pos:
                self.rv[:rem] = self.rv[pos:rn]
            self.rn = rem

    def _oversize(self, first, pos, start, end, rn):
        """A packet larger than the receive buffer: read it into one buffer of its own,
        or, without memory for that, skip it (a PUBLISH is still acknowledged)."""
        try:
            big = bytearray(end - pos)
        except MemoryError:
            self.lost += 1
            self.skip = end - rn
            print("edge_client: no memory for a %d-byte packet: dropped" % (end - pos))
            if first & 0xF0 == 0x30 and first & 6:
                i = start + 2 + (self.rb[start] << 8 | self.rb[start + 1])
                if i + 2 <= rn:
                    pid = self.rb[i] << 8 | self.rb[i + 1]
                    if first & 6 == 2:
                        self.ctl(_PUBACK, pid)
                    else:
                        self.incoming(pid, True)
                        self.ctl(_PUBREC, pid)
            return
        memoryview(big)[: rn - pos] = self.rv[pos:rn]
        self.big = big
        self.bn = rn - pos

    def _one(self, buf, pos, end, first=None, start=0):
        if first is None:
            first, start, end = P.frame(buf, pos, end)
        self.count += 1
        self.op = first
        self._dispatch(first, buf, start, end)

    def _dispatch(self, first, b, i, end):
        """One packet: b[i:end] is its body."""
        kind = first & 0xF0
        n = end - i
        if kind == 0x30:  # PUBLISH
            qos = first >> 1 & 3
            if n < 2 or qos == 3:
                raise P.MQTTException("bad PUBLISH")
            tl = b[i] << 8 | b[i + 1]
            j = i + 2 + tl
            if j + (2 if qos else 0) > end:
                raise P.MQTTException("bad PUBLISH")
            pid = 0
            if qos:
                pid = b[j] << 8 | b[j + 1]
            if qos < 2 or pid not in self.inq:  # a resent QoS 2 PUBLISH before PUBREL is not delivered twice
                v = memoryview(b)
                topic = bytes(v[i + 2 : j])
                msg = bytes(v[j + (2 if qos else 0) : end])
                cb = self.cb
                try:
                    if cb is not None:
                        if self.info:
                            cb(topic, msg, bool(first & 1), qos)
                        else:
                            cb(topic, msg)
                except Exception as x:  # the message counts as delivered; the caller hears of it
                    self.failed = x
                finally:
                    if qos == 2:
                        self.incoming(pid, True)
            if qos:
                self.ctl(_PUBACK if qos == 1 else _PUBREC, pid)
            return
        if kind == 0x20:  # CONNACK
            if n != 2:
                raise P.MQTTException("bad CONNACK")
            if b[i + 1]:
                raise P.MQTTException(b[i + 1])
            self.present = present = bool(b[i] & 1) and not self.clean
            self.up = True
            self.done = {}
            if present:
                for pid in self.acks:
                    self.raw(self.acks[pid])  # requests the old connection left unanswered
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
            return
        if kind == 0xD0:  # PINGRESP
            self.ping_at = None
            return
        if n < 2 or (kind == 0x90 and n < 3):
            raise P.MQTTException("bad packet 0x%02x" % first)
        pid = b[i] << 8 | b[i + 1]
        if kind == 0x60:  # PUBREL
            self.incoming(pid, False)
            self.ctl(_PUBCOMP, pid)
            return
        e = self.find(pid)
        if kind == _PUBACK or kind == _PUBCOMP:
            if e is not None and (e[1] & _REL) == (kind == _PUBCOMP) * _REL:
                self.remove(e)
        elif kind == _PUBREC:
            if e is not None and e[1] & 6 == 4 and not e[1] & _REL:
                # the broker owns the message now: keep only the id; PUBREL goes out next
                e[1] = e[1] & 6 | _REL
                e[3] = b""
                self.log(b"R", e)
            else:
                self.ctl(_PUBREL, pid)  # an unknown id too, so the broker can finish
        elif kind == 0x90 or kind == 0xB0:  # SUBACK, UNSUBACK
            if self.acks.pop(pid, None) is not None:
                self.done[pid] = b[i + 2] if kind == 0x90 else 0
        else:
            raise P.MQTTException("unexpected packet 0x%02x" % first)
