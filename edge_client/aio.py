"""asyncio MQTT client: the same sans-I/O Session as the blocking client, driven by a task.

    client = MQTTClient("node-1", "broker.local", keepalive=30)
    client.set_callback(on_message)
    await client.connect()            # starts the background task
    await client.subscribe("cmd/#", 2)
    await client.publish("t/temp", b"21.5", qos=1)

The background task reads, acknowledges, pings and reconnects with backoff; the
coroutines only queue work in the Session and wait for its outcome. Runs on
CPython's asyncio and MicroPython's asyncio alike. An exception raised by the
message callback is printed and the message counts as delivered: the task has
no caller to hand it to.
"""
import asyncio
import errno
from random import getrandbits

from .packets import MQTTException, OutboxFull, to_bytes
from .session import Session

try:
    from time import ticks_add, ticks_diff, ticks_ms  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # CPython
    from .compat import ticks_add, ticks_diff, ticks_ms  # type: ignore[no-redef,assignment,unused-ignore]

_FAIL = (OSError, MQTTException, asyncio.TimeoutError)


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
        self.reader = self.writer = self.task = None
        self.want = False
        self.auto = reconnect
        self.timeout = timeout
        self.backoff = backoff_ms
        self.delay = 0
        self.retry_at = ticks_ms()
        self.changed = asyncio.Event()  # replaced and set whenever the session moved on

    def set_callback(self, f, info=False):
        """f(topic, msg); with info=True f(topic, msg, retained, qos). Called from the task."""
        self.s.cb = f
        self.s.info = info

    def set_last_will(self, topic, msg, retain=False, qos=0):
        if not 0 <= qos <= 2 or not topic:
            raise ValueError("will")
        self.s.will = (to_bytes(topic), to_bytes(msg), retain, qos)

    async def connect(self, clean_session=True):
        """Connect now and return session present; start the background task. A failure
        raises, and with reconnect=True the task keeps retrying afterwards."""
        self.s.clean = clean_session
        self.want = True
        try:
            return await self._open()
        except _FAIL:
            self._lost()
            raise
        finally:
            if self.task is None:
                self.task = asyncio.create_task(self._loop())

    async def disconnect(self):
        self.want = False
        if self.writer is not None:
            self.s.ctl(0xE0, -1)
            try:
                await self._flush()
            except _FAIL:
                pass
        self._lost()
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def publish(self, topic, msg, retain=False, qos=0, on_full=None):
        """Queue and send; never waits for acks. A full outbox: see the blocking
        client ("drop", "refuse" -> False, "raise" and "block" -> OutboxFull)."""
        s = self.s
        mode = on_full or self.on_full
        if mode != "drop" and s.full():
            if mode == "refuse":
                return False
            if (
                mode != "block"
                or not (self.writer is not None or self.want and self.auto)  # nothing can make room
                or not await self._until(lambda: not s.full(), self.timeout * 1000)
            ):
                raise OutboxFull()
        ok = s.publish(topic, msg, retain, qos, mode == "drop")
        await self._send()
        return ok

    async def subscribe(self, topic, qos=0):
        """Returns the granted QoS, or None while offline (sent on connect) or when no
        SUBACK came within timeout. qos=None unsubscribes."""
        s = self.s
        pid = s.subscription(topic, qos)
        if pid is None:
            return None
        await self._send()
        if not await self._until(lambda: pid in s.done or pid not in s.acks, self.timeout * 1000):
            return None
        code = s.done.pop(pid, None)
        if code == 0x80:
            s.subs.pop(to_bytes(topic), None)
            raise MQTTException(0x80)
        return code

    async def unsubscribe(self, topic):
        await self.subscribe(topic, None)

    async def flush(self, timeout_ms=10000):
        """Wait until every queued message is acknowledged."""
        s = self.s
        return await self._until(lambda: not s.pending(), timeout_ms)

    def isconnected(self):
        return self.s.up

    def pending(self):
        return self.s.pending()

    # -- I/O ------------------------------------------------------------------

    async def _open(self):
        if self.writer is not None:
            self._lost()
        kw = {}
        if self.tls:
            from .tls import context

            kw["ssl"] = context(self.tls[0], self.tls[1])
            kw["server_hostname"] = self.tls[1].get("server_hostname", self.server)
        r, w = await asyncio.wait_for(  # type: ignore[var-annotated,unused-ignore]
            asyncio.open_connection(self.server, self.port, **kw), self.timeout
        )
        self.reader = r
        self.writer = w
        s = self.s
        s.start(s.clean, ticks_ms())
        await self._flush()
        t0 = ticks_ms()
        while not s.up:
            left = self.timeout * 1000 - ticks_diff(ticks_ms(), t0)
            if left <= 0:
                raise OSError(errno.ETIMEDOUT)
            self._feed(await asyncio.wait_for(r.read(2048), left / 1000))
        await self._flush()
        self.delay = 0
        self._wake()
        return s.present

    def _feed(self, d):
        if not d:
            raise OSError(errno.ECONNRESET)
        s = self.s
        try:
            s.feed(d)
        except Exception as e:
            if e is not s.failed:
                raise  # a malformed packet (MQTTException) and the like: drop the connection
            print("edge_client: callback failed:", repr(e))  # the user's: report, keep going

    async def _flush(self):
        w = self.writer
        if w is None:
            return
        wrote = False
        while True:
            out = self.s.take(ticks_ms())
            if not out:
                break
            for b in out:
                w.write(bytes(b))  # the session reuses its buffer: hand over a copy
            wrote = True
        if wrote:
            await w.drain()

    async def _send(self):
        """Flush now if connected; a broken link is left to the task to repair."""
        try:
            await self._flush()
        except _FAIL:
            self._lost()

    def _lost(self):
        """Drop the connection and schedule the next try: exponential backoff, equal jitter."""
        w = self.writer
        self.reader = self.writer = None
        if w is not None:
            try:
                w.close()
            except OSError:
                pass
        self.s.up = False
        lo, hi = self.backoff
        d = self.delay = min(hi, self.delay * 2 if self.delay else lo)
        self.retry_at = ticks_add(ticks_ms(), d // 2 + getrandbits(20) % (d // 2 + 1))
        self._wake()

    def _wake(self):
        ev = self.changed
        self.changed = asyncio.Event()
        ev.set()

    async def _until(self, cond, ms):
        t0 = ticks_ms()
        while not cond():
            left = ms - ticks_diff(ticks_ms(), t0)
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), left / 1000)
            except asyncio.TimeoutError:
                pass
        return True

    async def _loop(self):
        while self.want:
            if self.reader is None:
                if not self.auto:
                    break
                wait = ticks_diff(self.retry_at, ticks_ms())
                if wait > 0:
                    await asyncio.sleep(wait / 1000)
                    continue
                try:
                    await self._open()
                except (OSError, MQTTException, asyncio.TimeoutError, MemoryError):
                    self._lost()
                continue
            try:
                try:
                    d = await asyncio.wait_for(self.reader.read(2048), 1)
                except asyncio.TimeoutError:
                    d = None
                if d is not None:
                    self._feed(d)
                await self._flush()  # acks, retransmissions, keepalive pings
            except _FAIL:
                self._lost()
            except MemoryError:  # drop what was half read; the next round reconnects
                self._lost()
                print("edge_client: out of memory; connection dropped")
            self._wake()
        self.task = None
