"""Blocking MQTT client with the umqtt.simple API, plus QoS 2, keepalive, reconnect and an outbox.

This is the I/O edge: a socket, select.poll and a clock around the sans-I/O Session.
Reads happen only after poll reports data, so the socket keeps one timeout (used
for connect and writes) on every port, plain or TLS. Connect attempts block for
at most `timeout` seconds; everything else returns within the time asked for.
Bytes are read straight into the session's receive buffer and written from its
send buffer, so a burst allocates nothing that grows with it. A MemoryError
inside the client drops the connection (and with it any half-read packet),
says so, and the next call reconnects: it never reaches the caller.
"""
import errno
import gc
import select
import socket
from random import getrandbits

from .packets import MQTTException, OutboxFull, to_bytes
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
        bufsize=1024,
        on_full=None,
    ):
        if port == 0:
            port = 8883 if ssl else 1883
        self.server = server
        self.port = port
        self.tls = (ssl, ssl_params) if ssl else None
        if not outbox_size and not outbox:
            raise ValueError("outbox_size=0 (no bound) needs a file outbox")
        args = (client_id, keepalive, outbox_size, drop_oldest, max_inflight, max_packet, bufsize)
        if not outbox:
            s = self.s = Session(*args)
        else:
            from .persist import FilePersist

            s = self.s = FilePersist(outbox, *args)
        if user is not None:
            s.auth = (to_bytes(user), None if password is None else to_bytes(password))
        self.on_full = on_full or ("drop" if drop_oldest else "refuse")
        self.sock = self.raw = self.poller = self.rd = self.wr = None
        self.nb = False
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
        except MemoryError:
            self._oom()
            raise OSError(errno.ENOMEM)

    def disconnect(self):
        self.want = False
        if self.sock is not None:
            self.s.ctl(0xE0, -1)
            try:
                self._flush()
            except (OSError, MemoryError):
                pass
        self._lost()

    def ping(self):
        self.s.ctl(0xC0, -1)
        self._io(0)

    def publish(self, topic, msg, retain=False, qos=0, on_full=None):
        """Queue and send; never waits for acks. When the outbox is full, on_full (or
        the client's) decides: "drop" the oldest unsent message, "refuse" (return
        False), "raise" OutboxFull, or "block": keep the connection going until
        there is room, raising OutboxFull after `timeout` seconds. Returns False
        also when there was no memory for the message."""
        s = self.s
        mode = on_full or self.on_full
        t0 = ticks_ms()
        while True:
            try:
                if mode == "drop" or not s.full():
                    ok = s.publish(topic, msg, retain, qos, mode == "drop")
                    break
            except MemoryError:
                self._oom(False)
                return False
            if mode == "refuse":
                return False
            if mode != "block" or ticks_diff(ticks_ms(), t0) >= self.timeout * 1000 or not (
                self.sock is not None or self.want and self.auto
            ):
                raise OutboxFull()
            if self.sock is None:
                sleep_ms(min(100, max(0, ticks_diff(self.retry_at, ticks_ms()))))
            self.step(100)
        self._io(0)  # also reads waiting acks, which may open the in-flight window
        return ok

    def subscribe(self, topic, qos=0):
        """Returns the granted QoS, or None while offline (the request is sent on
        connect) or when no SUBACK came within timeout. qos=None unsubscribes."""
        s = self.s
        try:
            pid = s.subscription(topic, qos)
        except MemoryError:
            self._oom(False)
            return None
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
                except MemoryError:
                    self._oom()
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
        return self.s.pending()

    # -- I/O ------------------------------------------------------------------

    def _open(self):
        if self.sock is not None:
            self._lost()
        ai = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0]
        sock = self.sock = self.raw = socket.socket(ai[0], ai[1], ai[2])
        sock.settimeout(self.timeout)
        sock.connect(ai[-1])
        if self.tls:
            from .tls import wrap

            sock = self.sock = wrap(sock, self.tls[0], self.tls[1], self.server)
        # CPython: recv_into returns what has arrived. MicroPython's readinto waits for
        # the whole buffer on a blocking socket, so reads switch it to non-blocking.
        self.nb = not hasattr(self.raw, "recv_into")  # MicroPython (its TLS socket has one)
        self.rd = getattr(sock, "readinto" if self.nb else "recv_into")
        self.wr = getattr(sock, "sendall", None) or getattr(sock, "write")
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
        self.sock = self.raw = self.poller = self.rd = self.wr = None
        self.s.up = False  # nothing more goes to the wire until the next CONNACK
        lo, hi = self.backoff
        d = self.delay = min(hi, self.delay * 2 if self.delay else lo)
        self.retry_at = ticks_add(ticks_ms(), d // 2 + getrandbits(20) % (d // 2 + 1))

    def _oom(self, drop=True):
        """A MemoryError inside the client: drop the connection (its half-read packet
        with it) so that the next call starts clean, collect, and say so."""
        if drop:
            self._lost()
        gc.collect()
        print("edge_client: out of memory;", "connection dropped" if drop else "request not queued")

    def _read(self, ms):
        sock = self.sock
        p = self.poller
        rd = self.rd
        raw = self.raw
        if sock is None or p is None or rd is None or raw is None or not p.poll(ms):
            return
        s = self.s
        try:
            if self.nb:
                raw.setblocking(False)
                try:
                    n = rd(s.room())
                finally:
                    raw.settimeout(self.timeout)
            else:
                n = rd(s.room())
        except OSError as e:
            if e.args[0] in _AGAIN:
                return
            raise
        if n is None:
            return
        if not n:
            raise OSError(errno.ECONNRESET)
        self.poller = None  # no nested reads while callbacks run: a callback may publish
        pending = getattr(sock, "pending", None)  # CPython TLS: decrypted bytes poll cannot see
        err = None
        try:
            while True:
                try:
                    s.received(n)
                except Exception as e:  # the callback's: raised once everything read is processed
                    if e is not s.failed:
                        raise
                    err = err or e
                if not (pending and pending()):
                    break
                n = rd(s.room())
        finally:
            if self.sock is sock:
                self.poller = p
        if err is not None:
            raise err

    def _flush(self):
        s = self.s
        wr = self.wr
        while wr is not None and self.sock is not None:
            out = s.take(ticks_ms())
            if not out:
                return
            for b in out:
                wr(b)

    def _io(self, ms):
        """One round on a live connection; a broken one is dropped (and raised
        when reconnect=False, like umqtt). A callback's exception reaches the
        caller once the packets read with it are processed and acknowledged."""
        if self.sock is None:
            return
        try:
            try:
                self._read(ms)
            finally:
                self._flush()
        except _FAIL:
            self._lost()
            if not self.auto:
                raise
        except MemoryError:
            self._oom()
            if not self.auto:
                raise OSError(errno.ENOMEM)

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
                ok = not s.pending()
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
