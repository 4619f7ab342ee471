"""Blocking MQTT client with the umqtt.simple API, plus QoS 2, keepalive, reconnect and an outbox.

This is the I/O edge: a socket, select.poll and a clock around the sans-I/O Session.
Reads happen only after poll reports data, so the socket keeps one timeout (used
for connect and writes) on every port, plain or TLS. Connect attempts block for
at most `timeout` seconds; everything else returns within the time asked for.
"""
import errno
import select
import socket
from random import getrandbits

from .packets import MQTTException, to_bytes
from .session import Session

try:
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # CPython
    from .compat import sleep_ms, ticks_add, ticks_diff, ticks_ms  # type: ignore[no-redef,assignment,unused-ignore]


_AGAIN = (errno.EAGAIN, errno.ETIMEDOUT)  # "no data yet": EAGAIN on the Unix port, ETIMEDOUT on lwIP
_FAIL = (OSError, MQTTException)


class MQTTClient:
    def __init__(
        self,
        client_id,
        server,
        port=0,
        user=None,
        password=None,
        keepalive=0,
        ssl=False,
        ssl_params={},
        outbox=None,
        outbox_size=32,
        drop_oldest=True,
        reconnect=True,
        timeout=10,
        backoff_ms=(1000, 60000),
        max_inflight=8,
        max_packet=16384,
    ):
        if port == 0:
            port = 8883 if ssl else 1883
        self.server = server
        self.port = port
        self.tls = (ssl, ssl_params) if ssl else None
        args = (client_id, keepalive, outbox_size, drop_oldest, max_inflight, max_packet)
        if not outbox:
            s = self.s = Session(*args)
        else:
            from .persist import FilePersist

            s = self.s = FilePersist(outbox, *args)
        if user is not None:
            s.auth = (to_bytes(user), None if password is None else to_bytes(password))
        self.sock = self.poller = None
        self.want = False  # connect() was called and disconnect() was not
        self.auto = reconnect
        self.timeout = timeout
        self.backoff = backoff_ms
        self.delay = 0
        self.retry_at = ticks_ms()

    # -- umqtt.simple API ---------------------------------------------------

    def set_callback(self, f, info=False):
        """f(topic, msg); with info=True f(topic, msg, retained, qos)."""
        self.s.cb = f
        self.s.info = info

    def set_last_will(self, topic, msg, retain=False, qos=0):
        if not 0 <= qos <= 2 or not topic:
            raise ValueError("will")
        self.s.will = (to_bytes(topic), to_bytes(msg), retain, qos)

    def connect(self, clean_session=True):
        """Connect now and return session present. A failure raises; with
        reconnect=True, step() and the waiting calls keep retrying afterwards."""
        self.s.clean = clean_session
        self.want = True
        try:
            return self._open()
        except _FAIL:
            self._lost()
            raise

    def disconnect(self):
        self.want = False
        if self.sock is not None:
            self.s.out += b"\xe0\x00"
            try:
                self._flush()
            except OSError:
                pass
        self._lost()

    def ping(self):
        self.s.out += b"\xc0\x00"
        self._io(0)

    def publish(self, topic, msg, retain=False, qos=0):
        """Queue and send; never waits for acks. False when a full outbox refused it."""
        ok = self.s.publish(topic, msg, retain, qos)
        self._io(0)  # also reads waiting acks, which may open the in-flight window
        return ok

    def subscribe(self, topic, qos=0):
        """Returns the granted QoS, or None while offline (the request is sent on
        connect) or when no SUBACK came within timeout. qos=None unsubscribes."""
        s = self.s
        pid = s.subscription(topic, qos)
        if pid is None:
            return None
        self._io(0)
        if not self._run(self.timeout * 1000, 2, pid):
            return None
        code = s.done.pop(pid, None)
        if code == 0x80:
            s.subs.pop(to_bytes(topic), None)
            raise MQTTException(0x80)
        return code

    def unsubscribe(self, topic):
        self.subscribe(topic, None)

    def wait_msg(self):
        """Block until one packet has been processed; returns its type byte."""
        self._run(None, 0, self.s.count)
        return self.s.op

    def check_msg(self):
        """Like wait_msg, but returns None at once when nothing has arrived."""
        n = self.s.count
        self.step()
        return self.s.op if self.s.count != n else None

    # -- beyond umqtt ---------------------------------------------------------

    def step(self, ms=0):
        """Non-blocking service for a main loop: read, ack, ping, resend, and reconnect
        once the backoff allows. Waits up to ms for data. Returns whether connected."""
        if self.sock is None:
            if self.want and self.auto and ticks_diff(ticks_ms(), self.retry_at) >= 0:
                try:
                    self._open()
                except _FAIL:
                    self._lost()
        else:
            self._io(ms)
        return self.sock is not None

    def flush(self, timeout_ms=10000):
        """Drive the connection until every queued message is acknowledged."""
        return self._run(timeout_ms, 1, None)

    def isconnected(self):
        return self.s.up

    def pending(self):
        """Messages the broker has not acknowledged yet (queued or in flight)."""
        return len(self.s.q)

    # -- I/O ------------------------------------------------------------------

    def _open(self):
        if self.sock is not None:
            self._lost()
        ai = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0]
        sock = self.sock = socket.socket(ai[0], ai[1], ai[2])
        sock.settimeout(self.timeout)
        sock.connect(ai[-1])
        if self.tls:
            from .tls import wrap

            sock = self.sock = wrap(sock, self.tls[0], self.tls[1], self.server)
        p = self.poller = select.poll()
        p.register(sock, select.POLLIN)
        s = self.s
        s.start(s.clean, ticks_ms())
        self._flush()
        t0 = ticks_ms()
        while not s.up:
            if ticks_diff(ticks_ms(), t0) > self.timeout * 1000:
                raise OSError(errno.ETIMEDOUT)
            self._read(100)
        self._flush()  # resubscriptions and retransmissions queued by CONNACK
        self.delay = 0
        return s.present

    def _lost(self):
        """Drop the connection and schedule the next try: exponential backoff, equal jitter."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = self.poller = None
        self.s.up = False  # nothing more goes to the wire until the next CONNACK
        lo, hi = self.backoff
        d = self.delay = min(hi, self.delay * 2 if self.delay else lo)
        self.retry_at = ticks_add(ticks_ms(), d // 2 + getrandbits(20) % (d // 2 + 1))

    def _read(self, ms):
        sock = self.sock
        p = self.poller
        if sock is None or p is None or not p.poll(ms):
            return
        try:
            d = sock.recv(2048)
        except OSError as e:
            if e.args[0] in _AGAIN:
                return
            raise
        if not d:
            raise OSError(errno.ECONNRESET)
        self.poller = None  # no nested reads while callbacks run: a callback may publish
        try:
            self.s.feed(d)
            pending = getattr(sock, "pending", None)  # CPython TLS: decrypted bytes poll cannot see
            while pending and pending():
                self.s.feed(sock.recv(2048))
        finally:
            if self.sock is sock:
                self.poller = p

    def _flush(self):
        d = self.s.take(ticks_ms())
        sock = self.sock
        if d and sock is not None:
            sock.sendall(d)

    def _io(self, ms):
        """One round on a live connection; a broken one is dropped (and raised
        when reconnect=False, like umqtt)."""
        if self.sock is None:
            return
        try:
            self._read(ms)
            self._flush()
        except _FAIL:
            self._lost()
            if not self.auto:
                raise

    def _run(self, ms, until, arg):
        """Drive the connection, reconnecting as allowed, until a condition holds or
        ms pass (None: no limit). until: 0 = a packet after count arg, 1 = outbox
        empty, 2 = request pid arg answered or abandoned."""
        s = self.s
        t0 = ticks_ms()
        while True:
            if until == 0:
                ok = s.count != arg
            elif until == 1:
                ok = not s.q
            else:
                ok = arg in s.done or arg not in s.acks
            if ok:
                return True
            left = 1000 if ms is None else ms - ticks_diff(ticks_ms(), t0)
            if left <= 0:
                return False
            if self.sock is None:
                if not (self.want and self.auto):
                    raise OSError(errno.ENOTCONN)
                wait = ticks_diff(self.retry_at, ticks_ms())
                if wait > 0:
                    sleep_ms(min(wait, left))
                    continue
            self.step(min(left, 1000))
