"""A Session whose outbox is kept in an append-only file on flash, so readings survive a reset or deep sleep.

Every change appends one record and closes the file again: no open handle, no
unflushed buffer when the power goes. Record: kind byte and packet id, and for
b"+" (message added) flags, topic length, payload length, topic, payload.
A b"+" for an id already loaded is its PUBREC (flags with REL, no payload).
Other kinds: b"-" message done, b"I"/b"i" incoming QoS 2 id pending/released. A torn last record is ignored on load. The file is
rewritten compactly (temp file + rename, which littlefs and POSIX do atomically)
after loading and when dead records pile up, and emptied when the outbox is.
"""
import os
import struct

from .session import Session

_sync = getattr(os, "fsync", None)  # CPython: make each record durable; MicroPython commits on close


class FilePersist(Session):
    def __init__(self, path, *args):
        Session.__init__(self, *args)
        self.path = path
        self.records = 0
        try:
            f = open(path, "rb")
        except OSError:
            f = None
        if f is not None:
            with f:
                while True:
                    h = f.read(3)
                    if len(h) < 3:
                        break
                    kind, pid = struct.unpack("!BH", h)
                    if kind == 0x2B:  # "+": a message, or its new state after PUBREC
                        h = f.read(7)
                        if len(h) < 7:
                            break
                        flags, tl, ml = struct.unpack("!BHI", h)
                        d = f.read(tl + ml)
                        if len(d) < tl + ml:
                            break
                        if flags & 6 and not flags & 0x10:
                            flags |= 8  # DUP: it may have reached the broker before the reset
                        e = self.find(pid)
                        if e is None:
                            self.q.append([pid, flags, d[:tl], d[tl:]])
                        else:
                            e[1] = flags
                            e[3] = b""
                    elif kind == 0x2D:  # "-"
                        e = self.find(pid)
                        if e is not None:
                            self.q.remove(e)
                    elif kind == 0x49:  # "I"
                        self.inq.add(pid)
                    elif kind == 0x69:  # "i"
                        self.inq.discard(pid)
        self.log(None, None)  # rewrite compactly: drops a torn tail and dead records

    def log(self, kind, e):
        """Append one record; with kind None, or when dead records pile up, rewrite
        the live state into a temp file and rename it over the log."""
        live = len(self.q) + len(self.inq)
        if kind and live and self.records <= 4 * live + 16:
            recs = [(kind, e)]
            path = self.path
            self.records += 1
        else:
            recs = []
            for e in self.q:
                recs.append((b"+", e))
            for pid in self.inq:
                recs.append((b"I", (pid,)))
            path = self.path + ".tmp"
            self.records = len(recs)
        with open(path, "ab" if path == self.path else "wb") as f:
            for kind, e in recs:
                f.write(kind + struct.pack("!H", e[0]))
                if kind == b"+":
                    f.write(struct.pack("!BHI", e[1] & 0x17, len(e[2]), len(e[3])) + e[2] + e[3])
            if _sync:
                f.flush()
                _sync(f.fileno())
        if path != self.path:
            os.rename(path, self.path)
