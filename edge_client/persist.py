"""A Session whose outbox lives in an append-only file on flash: readings survive a reset
or deep sleep, and the backlog a device can hold is bounded by flash, not by its heap.

Only the head of the outbox is in RAM (`window` entries, enough for the in-flight
window); the rest is read from the file as the head drains. Every change appends
one record and closes the file again (no open handle, no unflushed buffer when
the power goes); loading reads the file without rewriting it, so a node that
wakes every minute does not wear its flash out. Records:

    A flags pid:2 topic_len:2 payload_len:4 topic payload   a message; its identity
                                                           is the offset of this record
    H off:4     every message before offset off is done (the head moved)
    D off:4     the message at off is done (acknowledged out of order)
    R off:4     the message at off got its PUBREC: only PUBREL/PUBCOMP remain
    I pid:2 / i pid:2   incoming QoS 2 id pending / released

A torn last record (power cut mid-write) is ignored on load, and the file is then
rewritten. Otherwise it is rewritten (temp file + rename, atomic on littlefs and
POSIX) only when it has grown past `limit` bytes and twice its size after the
last rewrite, or when out-of-order acknowledgements pile up; it is emptied when
nothing is left in it.
"""
import os
import struct

from .session import Session

_sync = getattr(os, "fsync", None)  # CPython: make each record durable; MicroPython commits on close


class FilePersist(Session):
    limit = 16384  # bytes the file may grow to before dead records are dropped
    max_ooo = 32  # D records allowed before a rewrite (each costs RAM when loading)

    def __init__(self, path, *args):
        Session.__init__(self, *args)
        self.path = path
        self.window = self.max_inflight + 2  # entries kept in RAM
        self.dead = set()  # offsets past the head that were done out of order
        self.rel = set()  # offsets past the window that got PUBREC
        self.ooo = 0
        self.cur = self.size = self.base = 0
        try:
            f = open(path, "rb")
        except OSError:
            return
        if f.read(1) == b"+":  # the format before records had their own identity
            f.close()
            os.rename(path, path + ".v1")
            print("edge_client: %s is in the old outbox format: moved to %s.v1, not loaded" % (path, path))
            return
        with f:
            good, end = self._scan(f)
            self.size = self.base = good
            self.cur = self.head
            f.seek(self.cur)
            c = good
            while True:
                full = not self._busy()
                e = self._next(f, full)
                if e is None:
                    break
                if full:
                    if e[1] & 6 and not e[1] & 0x10:
                        e[1] |= 8  # DUP: it may have reached the broker before the reset
                    self.q.append(e)
                    c = self.cur
                else:
                    self.more += 1
            self.cur = c if self.more else good
        if good != end:
            self._compact()  # a torn tail: appending after it would garble the log

    def _scan(self, f):
        """First pass: head, dead and released offsets, incoming ids, the last packet id.
        Returns the end of the last complete record and the end of the file."""
        f.seek(0, 2)
        end = f.tell()
        f.seek(0)
        self.head = pos = 0
        dead = self.dead
        rel = self.rel
        while True:
            k = f.read(1)
            if not k:
                break
            k = k[0]
            if k == 0x41:  # A
                h = f.read(9)
                if len(h) < 9:
                    break
                flags, pid, tl, ml = struct.unpack("!BHHI", h)
                n = pos + 10 + tl + ml
                if n > end:
                    break
                f.seek(n)
                if pid:
                    self.pid = pid
            elif k == 0x49 or k == 0x69:  # I, i
                h = f.read(2)
                if len(h) < 2:
                    break
                pid = struct.unpack("!H", h)[0]
                if k == 0x49:
                    self.inq.add(pid)
                else:
                    self.inq.discard(pid)
                n = pos + 3
            elif k == 0x48 or k == 0x44 or k == 0x52:  # H, D, R
                h = f.read(4)
                if len(h) < 4:
                    break
                off = struct.unpack("!I", h)[0]
                if k == 0x48:
                    self.head = off
                    for s in (dead, rel):
                        for o in list(s):
                            if o < off:
                                s.discard(o)
                elif k == 0x44:
                    dead.add(off)
                    rel.discard(off)
                else:
                    rel.add(off)
                n = pos + 5
            else:
                break
            pos = n
        return pos, end

    def _next(self, f, full):
        """The next live message from self.cur on (f positioned there), or None at the
        end. Without full, its topic and payload are skipped, not read. Leaves the
        record's topic and payload lengths in self.tl and self.ml."""
        while True:
            off = self.cur
            if off >= self.size:
                return None
            h = f.read(10)
            if not h or h[0] != 0x41:
                if not h:
                    return None
                self.cur = off + (3 if h[0] == 0x49 or h[0] == 0x69 else 5)
                f.seek(self.cur)
                continue
            flags, pid, tl, ml = struct.unpack("!BHHI", h[1:])
            self.cur = off + 10 + tl + ml
            if off in self.dead:
                f.seek(self.cur)
                continue
            self.tl = tl
            self.ml = ml
            if off in self.rel:
                flags |= 0x10
            if full:
                topic = f.read(tl)
                msg = f.read(ml)
                if flags & 0x10:
                    msg = b""
            else:
                topic = msg = b""
                f.seek(self.cur)
            return [pid, flags, topic, msg, off]

    # -- the outbox -------------------------------------------------------

    def add(self, e):
        e.append(self.size)
        self._append(self._record(e), 1)
        if self.more or self._busy():
            self.more += 1  # on flash only; read back when the head has drained
            e[3] = None
        else:
            self.q.append(e)
        if not self.more:
            self.cur = self.size

    def remove(self, e):
        q = self.q
        for i in range(len(q)):
            if q[i] is e:
                del q[i]
                self._gone(e[4], i == 0)
                self.refill()
                return

    def drop(self):
        if Session.drop(self):
            return True
        if not self.more:
            return False
        with open(self.path, "rb") as f:  # the oldest unsent message is the first beyond the window
            f.seek(self.cur)
            e = self._next(f, False)
        self.more -= 1
        if not self.more:
            self.cur = self.size
        if e is not None:
            self._gone(e[4], not self.q)
        return True

    def refill(self):
        """Read messages from the file until the window is full again."""
        if not self.more or self._busy():
            return
        with open(self.path, "rb") as f:
            f.seek(self.cur)
            while self.more and not self._busy():
                e = self._next(f, True)
                if e is None:
                    self.more = 0
                    break
                self.q.append(e)
                self.more -= 1
        if not self.more:
            self.cur = self.size

    def _busy(self):
        """Whether the window is full: entries holding a payload (after PUBREC only an
        id is left, and those must not stall the messages behind them)."""
        n = 0
        for e in self.q:
            if not e[1] & 0x10:
                n += 1
        return n >= self.window

    def _gone(self, off, head):
        if not self.q and not self.more and not self.inq:
            self._truncate()
        elif head:
            self.ooo = 0
            self._append((b"H" + struct.pack("!I", self.q[0][4] if self.q else self.cur),), 0)
        else:
            self.ooo += 1
            self._append((b"D" + struct.pack("!I", off),), 0)

    def log(self, kind, e):
        if kind == b"R":
            self._append((b"R" + struct.pack("!I", e[4]),), 0)
            self.refill()
        elif kind == b"I" or kind == b"i":
            self._append((kind + struct.pack("!H", e[0]),), 0)
            if kind == b"i" and not self.q and not self.more and not self.inq:
                self._truncate()

    # -- the file ---------------------------------------------------------

    def _record(self, e):
        """An A record as (header, topic, payload): written piece by piece, not joined."""
        t = e[2]
        m = e[3]
        return (b"A" + struct.pack("!BHHI", e[1] & 0x17, e[0], len(t), len(m)), t, m)

    def _write(self, f, rec):
        n = 0
        for b in rec:
            f.write(b)
            n += len(b)
        return n

    def _append(self, rec, new):
        """Append one record (a tuple of pieces); rewrite instead when the file has
        grown past its bound."""
        if not new and (
            self.ooo > self.max_ooo or self.size > self.limit and self.size > 2 * self.base
        ):
            self._compact()
            return
        with open(self.path, "ab") as f:
            self.size += self._write(f, rec)
            if _sync:
                f.flush()
                _sync(f.fileno())

    def _truncate(self):
        open(self.path, "wb").close()
        self.cur = self.size = self.base = 0
        self.dead = set()
        self.rel = set()
        self.ooo = 0

    def _compact(self):
        """Write the live state into a temp file and rename it over the log."""
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as w:
            pos = 0
            for e in self.q:
                e[4] = pos
                pos += self._write(w, self._record(e))
            cur = pos
            if self.more:
                with open(self.path, "rb") as f:
                    f.seek(self.cur)
                    for _ in range(self.more):
                        e = self._next(f, False)
                        if e is None:
                            break
                        ml = 0 if e[1] & 0x10 else self.ml
                        w.write(b"A" + struct.pack("!BHHI", e[1] & 0x17, e[0], self.tl, ml))
                        f.seek(e[4] + 10)
                        pos += 10 + self._copy(f, w, self.tl + ml)
                        f.seek(self.cur)
            for pid in self.inq:
                w.write(b"I" + struct.pack("!H", pid))
                pos += 3
            if _sync:
                w.flush()
                _sync(w.fileno())
        os.rename(tmp, self.path)
        self.cur = cur
        self.size = self.base = pos
        self.dead = set()
        self.rel = set()
        self.ooo = 0

    def _copy(self, f, w, n):
        buf = bytearray(256)  # only while rewriting: no RAM kept for it
        mv = memoryview(buf)
        left = n
        while left:
            k = f.readinto(mv[: min(left, len(buf))])
            if not k:
                break
            w.write(mv[:k])
            left -= k
        return n - left
