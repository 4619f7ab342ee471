"""The sans-I/O core (packets + Session + FilePersist), driven byte by byte without sockets."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from edge_client import packets as P
from edge_client.packets import MQTTException
from edge_client.persist import FilePersist
from edge_client.session import Session


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split bytes the session sent into (first byte, body) packets."""
    out = []
    while data:
        f = P.frame(data)
        assert f is not None, f"incomplete packet in {data!r}"
        first, start, end = f
        out.append((first, data[start:end]))
        data = data[end:]
    return out


def pub(flags: int, pid: int, topic: bytes, msg: bytes) -> bytes:
    """A PUBLISH packet, built independently of the session's encoder."""
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", pid) if flags & 6 else b"") + msg
    return P.packet(0x30 | flags, body)


def ack(kind: int, pid: int) -> bytes:
    return struct.pack("!BBH", kind, 2, pid)


def wire(s: Session, now: int = 0) -> bytes:
    """Everything the session has for the wire now."""
    return b"".join(bytes(b) for b in s.take(now))


def connack(present: bool = False, code: int = 0) -> bytes:
    return bytes((0x20, 2, int(present), code))


def publish_in(topic: bytes, msg: bytes, qos: int, pid: int = 0, dup: bool = False, retain: bool = False) -> bytes:
    return pub((8 if dup else 0) | qos << 1 | int(retain), pid, topic, msg)


def connected(session: Session | None = None, clean: bool = True, present: bool = False) -> Session:
    s = session or Session("dev")
    s.start(clean, 0)
    wire(s)
    s.feed(connack(present))
    return s


def test_remaining_length_boundaries_round_trip() -> None:
    for n in (0, 127, 128, 16383, 16384, 2097151, 2097152):
        pkt = P.packet(0x30, b"x" * n)
        first, start, end = P.frame(pkt)  # type: ignore[misc]
        assert (first, end - start, end) == (0x30, n, len(pkt))
        assert P.frame(pkt, 0, start - 1) is None  # the fixed header is incomplete
        if n:
            assert P.frame(pkt, 0, len(pkt) - 1)[2] > len(pkt) - 1  # type: ignore[index]  # the body is


def test_remaining_length_of_five_bytes_is_a_protocol_error() -> None:
    with pytest.raises(MQTTException):
        P.frame(b"\x30\xff\xff\xff\xff\x01")


def test_connect_packet_matches_the_spec_layout() -> None:
    pkt = P.connect(b"id", False, 60, (b"u", b"p"), (b"w/t", b"bye", True, 1))
    first, body = frames(pkt)[0]
    assert first == 0x10
    assert body[:7] == b"\x00\x04MQTT\x04"
    flags, keepalive = struct.unpack("!BH", body[7:10])
    assert flags == 0x80 | 0x40 | 0x20 | 0x08 | 0x04  # user, password, will retain, will QoS 1, will
    assert keepalive == 60
    assert body[10:] == b"\x00\x02id\x00\x03w/t\x00\x03bye\x00\x01u\x00\x01p"


def test_clean_connect_without_user_or_will() -> None:
    _, body = frames(P.connect(b"", True, 0, None, None))[0]
    assert body[7] == 0x02 and body[10:] == b"\x00\x00"


def test_qos1_publish_stays_until_puback() -> None:
    s = connected()
    assert s.publish("t", "m", qos=1)
    [(first, body)] = frames(wire(s))
    assert first == 0x32
    pid = struct.unpack("!H", body[3:5])[0]
    assert len(s.q) == 1
    s.feed(ack(0x40, pid))
    assert s.q == []


def test_qos2_publish_flow_releases_after_pubrec_and_ends_on_pubcomp() -> None:
    s = connected()
    s.publish(b"t", b"payload", qos=2)
    [(first, body)] = frames(wire(s))
    pid = struct.unpack("!H", body[3:5])[0]
    s.feed(ack(0x50, pid))
    assert frames(wire(s)) == [(0x62, struct.pack("!H", pid))]
    assert s.q[0][3] == b""  # payload dropped once the broker owns the message
    s.feed(ack(0x70, pid))
    assert s.q == []


def test_incoming_qos2_is_delivered_once_even_when_resent() -> None:
    s = connected()
    seen: list[tuple[bytes, bytes]] = []
    s.cb = lambda t, m: seen.append((t, m))
    s.feed(publish_in(b"c", b"on", 2, pid=7))
    s.feed(publish_in(b"c", b"on", 2, pid=7, dup=True))  # PUBREC was lost; the broker resends
    assert seen == [(b"c", b"on")]
    assert [f for f, _ in frames(wire(s))] == [0x50, 0x50]
    s.feed(ack(0x62, 7))
    assert frames(wire(s)) == [(0x70, b"\x00\x07")]
    s.feed(publish_in(b"c", b"on again", 2, pid=7))  # after PUBREL the id is free again
    assert seen[-1] == (b"c", b"on again")


def test_incoming_qos1_acked_and_info_callback_gets_retain_and_qos() -> None:
    s = connected()
    seen = []
    s.cb = lambda *a: seen.append(a)
    s.info = True
    s.feed(publish_in(b"t", b"x", 1, pid=3, retain=True))
    assert seen == [(b"t", b"x", True, 1)]
    assert frames(wire(s)) == [(0x40, b"\x00\x03")]


def test_packets_split_at_every_byte_boundary_are_reassembled() -> None:
    s = connected()
    seen: list[bytes] = []
    s.cb = lambda t, m: seen.append(m)
    data = publish_in(b"a", b"1", 0) + publish_in(b"b", b"2" * 300, 1, pid=9) + bytes((0xD0, 0))
    for i in range(len(data)):
        s.feed(data[i : i + 1])
    assert seen == [b"1", b"2" * 300]


def test_in_flight_window_keeps_order() -> None:
    s = Session("dev", max_inflight=2)
    connected(s)
    for i in range(5):
        s.publish("t", str(i), qos=1)
    sent = frames(wire(s))
    assert [b[-1:] for _, b in sent] == [b"0", b"1"]
    s.feed(ack(0x40, s.q[0][0]))
    assert [b[-1:] for _, b in frames(wire(s))] == [b"2"]


def test_full_outbox_drops_oldest_unsent_or_refuses() -> None:
    s = Session("dev", maxlen=3)  # offline: nothing is sent
    for i in range(5):
        assert s.publish("t", str(i), qos=1)
    assert [e[3] for e in s.q] == [b"2", b"3", b"4"] and s.dropped == 2
    r = Session("dev", maxlen=3, drop_oldest=False)
    assert [r.publish("t", str(i), qos=1) for i in range(5)] == [True, True, True, False, False]
    assert [e[3] for e in r.q] == [b"0", b"1", b"2"]


def test_offline_qos0_is_queued_and_sent_on_connect() -> None:
    s = Session("dev")
    s.publish("t", "early", qos=0)
    connected(s)
    [(first, body)] = frames(wire(s))
    assert first == 0x30 and body.endswith(b"early") and s.q == []


def test_reconnect_with_session_resends_with_dup_and_same_id() -> None:
    s = connected(clean=False)
    s.publish("t", "m", qos=2)
    [(_, body)] = frames(wire(s))
    pid = body[3:5]
    s.start(False, 0)  # connection lost, new one
    wire(s)
    s.feed(connack(present=True))
    [(first, body2)] = frames(wire(s))
    assert first == 0x3C and body2[3:5] == pid  # DUP | QoS 2


def test_reconnect_resends_pubrel_not_publish_after_pubrec() -> None:
    s = connected(clean=False)
    s.publish("t", "m", qos=2)
    pid = s.q[0][0]
    wire(s)
    s.feed(ack(0x50, pid))
    wire(s)
    s.start(False, 0)
    wire(s)
    s.feed(connack(present=True))
    assert frames(wire(s)) == [(0x62, struct.pack("!H", pid))]


def test_without_broker_session_subscriptions_are_restored() -> None:
    s = connected()
    s.subscription("a/#", 1)
    s.subscription("b", 2)
    s.subscription("b", None)
    wire(s)
    s.start(True, 0)
    wire(s)
    s.feed(connack(present=False))
    [(first, body)] = frames(wire(s))
    assert first == 0x82 and body[2:] == b"\x00\x03a/#\x01"


def test_with_broker_session_only_offline_requests_are_sent() -> None:
    s = connected(clean=False)
    s.subscription("a", 1)
    pid = struct.unpack("!H", frames(wire(s))[0][1][:2])[0]
    s.feed(bytes((0x90, 3)) + struct.pack("!H", pid) + b"\x01")
    assert s.done == {pid: 1}
    s.start(False, 0)
    wire(s)
    s.subscription("new", 0)  # made while offline
    s.feed(connack(present=True))
    [(first, body)] = frames(wire(s))
    assert first == 0x82 and body[2:] == b"\x00\x03new\x00"


def test_keepalive_pings_at_half_interval_and_declares_the_link_dead() -> None:
    s = Session("dev", keepalive=10)
    connected(s)
    assert wire(s, 4000) == b""
    assert wire(s, 5000) == b"\xc0\x00"
    assert wire(s, 14000) == b""
    s.feed(b"\xd0\x00")
    assert wire(s, 10000) == b"\xc0\x00"  # 5 s after the last packet sent
    with pytest.raises(MQTTException):
        s.take(20001)


def test_connack_refusal_raises_with_the_code() -> None:
    s = Session("dev")
    s.start(True, 0)
    with pytest.raises(MQTTException) as err:
        s.feed(connack(code=5))
    assert err.value.args[0] == 5


def test_oversized_packet_is_refused() -> None:
    s = connected(Session("dev", max_packet=100))
    with pytest.raises(MQTTException):
        s.feed(P.packet(0x30, b"x" * 200)[:150])


def test_file_outbox_replays_queue_states_and_incoming_ids(tmp_path: Path) -> None:
    path = str(tmp_path / "box")
    s = FilePersist(path, "dev")
    connected(s, clean=False)
    for i in range(4):
        s.publish("t", f"m{i}", qos=2 if i else 1)
    pids = [e[0] for e in s.q]
    wire(s)
    s.feed(ack(0x40, pids[0]))  # m0 done
    s.feed(ack(0x50, pids[1]))  # m1 released: only PUBREL/PUBCOMP left
    s.feed(publish_in(b"in", b"x", 2, pid=42))  # incoming QoS 2 awaiting PUBREL
    again = FilePersist(path, "dev")  # the device was reset
    assert [(e[0], e[1] & 0x16, e[3]) for e in again.q] == [
        (pids[1], 0x14, b""),
        (pids[2], 0x04, b"m2"),
        (pids[3], 0x04, b"m3"),
    ]
    assert all(e[1] & 0x08 for e in again.q[1:])  # DUP: they may have reached the broker
    assert again.inq == {42}
    seen: list[bytes] = []
    again.cb = lambda t, m: seen.append(m)
    connected(again, clean=False, present=True)
    sent = frames(wire(again))
    assert [f for f, _ in sent] == [0x62, 0x3C, 0x3C]
    again.feed(publish_in(b"in", b"x", 2, pid=42, dup=True))
    assert seen == []  # delivered before the reset: not again


def test_file_outbox_ignores_a_torn_last_record_and_empties_when_done(tmp_path: Path) -> None:
    path = tmp_path / "box"
    s = FilePersist(str(path), "dev")
    s.publish("t", "kept", qos=1)
    s.publish("t", "torn", qos=1)
    path.write_bytes(path.read_bytes()[:-3])  # power cut in the middle of the second record
    again = FilePersist(str(path), "dev")
    assert [e[3] for e in again.q] == [b"kept"]
    connected(again)
    wire(again)
    again.feed(ack(0x40, again.q[0][0]))
    assert again.q == [] and path.stat().st_size == 0


def test_file_outbox_compacts_dead_records(tmp_path: Path) -> None:
    path = tmp_path / "box"
    s = FilePersist(str(path), "dev", 100)
    connected(s)
    s.publish("t", "stays", qos=1)
    wire(s)
    for i in range(200):
        s.publish("t", "x" * 50, qos=1)
        wire(s)
        s.feed(ack(0x40, s.q[-1][0]))
    assert path.stat().st_size < 2000
    assert [e[3] for e in FilePersist(str(path), "dev").q] == [b"stays"]


def test_reconnect_delay_doubles_with_jitter_up_to_the_cap() -> None:
    from edge_client.client import MQTTClient
    from edge_client.compat import ticks_ms

    c = MQTTClient("dev", "127.0.0.1", 1, backoff_ms=(100, 1000))
    delays = []
    waits = []
    for _ in range(40):
        before = ticks_ms()
        c._lost()
        after = ticks_ms()
        delays.append(c.delay)
        assert before + c.delay // 2 <= c.retry_at <= after + c.delay  # equal jitter
        waits.append(c.retry_at - before)
    assert delays[:6] == [100, 200, 400, 800, 1000, 1000] and set(delays[6:]) == {1000}
    assert len(set(waits[6:])) > 5  # the jitter really varies


# -- regressions (issue 14) -------------------------------------------------------


def test_file_outbox_keeps_every_qos0_entry_across_reloads(tmp_path: Path) -> None:
    """QoS 0 entries all had packet id 0, so a reload took the second for an update of the first."""
    path = str(tmp_path / "box")
    s = FilePersist(path, "dev")  # offline: everything waits in the outbox
    s.publish("t", "one", qos=0)
    s.publish("t", "two", qos=0)
    s.publish("t", "three", qos=1)
    for _ in range(3):  # every reload must give the same outbox, the first included
        s = FilePersist(path, "dev")
        assert [(e[1] & 6, e[3]) for e in s.q] == [(0, b"one"), (0, b"two"), (2, b"three")]
    s.publish("t", "four", qos=0)
    connected(s)
    sent = frames(wire(s))
    assert [(f & 6, b[3:] if not f & 6 else b[5:]) for f, b in sent] == [
        (0, b"one"), (0, b"two"), (2, b"three"), (0, b"four")
    ]
    s = FilePersist(path, "dev")  # the QoS 0 ones left once written; three waits for PUBACK
    assert [e[3] for e in s.q] == [b"three"]


def test_callback_exception_still_acknowledges_and_the_rest_of_the_read_is_processed() -> None:
    s = connected()
    seen: list[bytes] = []

    def cb(topic: bytes, msg: bytes) -> None:
        seen.append(msg)
        if msg == b"first":
            raise ValueError("user code failed")

    s.cb = cb
    data = publish_in(b"t", b"first", 1, pid=3) + publish_in(b"t", b"second", 2, pid=4) + publish_in(b"t", b"third", 0)
    with pytest.raises(ValueError):
        s.feed(data)
    assert seen == [b"first", b"second", b"third"]  # nothing waits for more bytes to arrive
    assert frames(wire(s)) == [(0x40, b"\x00\x03"), (0x50, b"\x00\x04")]  # the failed one counts as delivered
    s.feed(publish_in(b"t", b"second", 2, pid=4, dup=True))
    assert seen[-1] == b"third"  # QoS 2 id kept: not delivered twice


MALFORMED = [
    ("publish shorter than its topic length", bytes((0x30, 3, 0, 9, 0x61))),
    ("publish without topic length", bytes((0x30, 1, 0))),
    ("qos 1 publish without packet id", bytes((0x32, 3, 0, 1, 0x61))),
    ("publish with qos 3", bytes((0x36, 5, 0, 1, 0x61, 0, 1))),
    ("short puback", bytes((0x40, 1, 0))),
    ("short pubrel", bytes((0x62, 1, 0))),
    ("suback without return code", bytes((0x90, 2, 0, 1))),
    ("empty connack", bytes((0x20, 0))),
]


@pytest.mark.parametrize("data", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_short_or_malformed_packet_raises_the_clients_exception(data: bytes) -> None:
    s = connected()
    s.cb = lambda t, m: None
    with pytest.raises(MQTTException):
        s.feed(data)


def test_aio_feed_reports_a_callback_error_but_not_a_malformed_packet(capsys: pytest.CaptureFixture[str]) -> None:
    from edge_client.aio import MQTTClient as AioClient

    c = AioClient("dev", "127.0.0.1", 1)
    connected(c.s)

    def cb(topic: bytes, msg: bytes) -> None:
        raise ValueError("user code failed")

    c.set_callback(cb)
    c._feed(publish_in(b"t", b"x", 1, pid=5))  # printed, the connection stays
    assert "callback failed" in capsys.readouterr().out
    assert frames(wire(c.s)) == [(0x40, b"\x00\x05")]
    with pytest.raises(MQTTException):
        c._feed(bytes((0x30, 3, 0, 9, 0x61)))


# -- the file outbox on flash: bounded RAM, append-only, few writes -------------------


class Flash:
    """Counts what reaches the file system through persist.py's open(): every open for
    writing is one flash write (an append, a truncation or a rewrite), and its bytes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import builtins

        import edge_client.persist as persist

        self.writes = self.rewrites = self.nbytes = 0
        real = builtins.open

        def counting_open(path, mode="r", *args):  # type: ignore[no-untyped-def]
            f = real(path, mode, *args)
            if "w" in mode or "a" in mode:
                self.writes += 1
                if str(path).endswith(".tmp"):
                    self.rewrites += 1
                write = f.write

                def counted(data):  # type: ignore[no-untyped-def]
                    self.nbytes += len(data)
                    return write(data)

                f.write = counted
            return f

        monkeypatch.setattr(persist, "open", counting_open, raising=False)
        monkeypatch.setattr(persist, "_sync", None)  # counted, not made durable: keeps the test fast


def everything(path: Path) -> list[tuple[int, bytes]]:
    """The whole outbox in the file, read with a window large enough for all of it."""
    return [(e[1] & 0x16, e[3]) for e in FilePersist(str(path), "dev", 0, 0, True, 100000).q]


def deliver_all(s: Session) -> list[bytes]:
    """Acknowledge every PUBLISH as the broker would, until the outbox is empty."""
    got = []
    for _ in range(100000):
        sent = frames(wire(s))
        if not sent and not s.pending():
            return got
        for first, body in sent:
            if first & 0xF0 == 0x30 and first & 6:
                tl = body[0] << 8 | body[1]
                pid = body[2 + tl] << 8 | body[3 + tl]
                got.append(bytes(body[4 + tl :]))
                s.feed(ack(0x40 if first & 6 == 2 else 0x50, pid))
            elif first == 0x62:
                s.feed(ack(0x70, struct.unpack("!H", body)[0]))
    raise AssertionError("the outbox never drained")


def test_a_node_waking_1000_times_offline_appends_one_record_per_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outbox.bin"
    flash = Flash(monkeypatch)
    record = 0
    for i in range(1000):  # each wake: boot (load the outbox), one reading, deep sleep
        s = FilePersist(str(path), "node", 0, 2000)
        assert s.pending() == i and len(s.q) <= s.window  # the backlog is not in RAM
        msg = '{"seq":%d}' % i
        s.publish("sensors/node/t", msg, qos=1)
        record += 10 + len("sensors/node/t") + len(msg)
    assert flash.rewrites == 0 and flash.writes == 1000 and flash.nbytes == record
    s = FilePersist(str(path), "node", 0, 2000)
    connected(s, clean=False)
    got = deliver_all(s)
    assert got == [b'{"seq":%d}' % i for i in range(1000)]
    assert path.stat().st_size == 0  # emptied once everything was acknowledged
    assert flash.rewrites == 0 and flash.writes <= 2000 + 1  # one small record per ack at most


def test_a_node_waking_1000_times_online_never_rewrites_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outbox.bin"
    flash = Flash(monkeypatch)
    for i in range(1000):
        s = FilePersist(str(path), "node", 0, 500)
        connected(s, clean=False, present=True)
        s.publish("sensors/node/t", '{"seq":%d}' % i, qos=1)
        assert deliver_all(s) == [b'{"seq":%d}' % i]
    assert flash.rewrites == 0
    assert flash.writes <= 2 * 1000  # the reading's record, then emptying the file


def test_file_outbox_matches_the_ram_outbox_through_random_flows_and_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Oracle: the in-RAM Session driven identically. The file outbox keeps a window of
    4 in RAM, so acks out of order, PUBRECs, drops and reloads cross the window edge.
    QoS 1/2 only: a queued QoS 0 message beyond the window rightly goes out later than
    from the RAM outbox (QoS 0 across reloads has its own test above)."""
    import random

    import edge_client.persist as persist

    monkeypatch.setattr(persist, "_sync", None)  # no fsync per record: the logic is under test
    rnd = random.Random(14)
    path = tmp_path / "outbox.bin"
    for round_ in range(40):
        path.unlink(missing_ok=True)
        maxlen = rnd.choice([0, 12])
        fp = FilePersist(str(path), "dev", 0, maxlen, True, 2)
        ram = Session("dev", 0, maxlen, True, 2)
        fp.limit = rnd.choice([200, 16384])
        n = 0
        for step in range(150):
            op = rnd.random()
            if op < 0.45:
                q = rnd.choice([1, 1, 2])
                msg = b"m%d" % n + b"x" * rnd.randrange(30)
                n += 1
                assert fp.publish("t", msg, qos=q) == ram.publish("t", msg, qos=q)
            elif op < 0.55:
                fp = FilePersist(str(path), "dev", 0, maxlen, True, 2)  # reset; the RAM one keeps going
                ram.start(False, 0)  # a new connection for both
                fp.start(False, 0)
            elif op < 0.7 and not fp.up:
                for s in (fp, ram):
                    s.start(False, 0)
                    wire(s)
                    s.feed(connack(present=True))
            elif fp.up:
                # the broker answers a random in-flight message (packet ids differ after a reset)
                fw, rw = frames(wire(fp)), frames(wire(ram))
                assert [f & 0xF6 for f, _ in fw] == [f & 0xF6 for f, _ in rw]
                inflight = [i for i, e in enumerate(ram.q) if e[1] & 0x20]
                if inflight:
                    i = rnd.choice(inflight)
                    e = ram.q[i]
                    assert fp.q[i][1] & 0x36 == e[1] & 0x36
                    kind = 0x40 if e[1] & 6 == 2 else 0x70 if e[1] & 0x10 else 0x50
                    fp.feed(ack(kind, fp.q[i][0]))
                    ram.feed(ack(kind, e[0]))
            mine = everything(path)
            theirs = [(e[1] & 0x16, e[3]) for e in ram.q]
            assert fp.pending() == len(theirs), (round_, step)
            assert mine == theirs, (round_, step)


# -- the preallocated buffers ------------------------------------------------------------


def test_packets_larger_than_the_receive_buffer_arrive_whole_at_every_split() -> None:
    s = connected(Session("dev", bufsize=64))
    seen: list[tuple[bytes, bytes]] = []
    s.cb = lambda t, m: seen.append((t, m))
    big = bytes(range(256)) * 2
    data = pub(0, 0, b"a", b"1") + pub(2, 9, b"big/topic", big) + pub(4, 10, b"b", b"2") + bytes((0xD0, 0))
    for size in (1, 3, 7, 64, 65, 500, len(data)):
        s.feed(b"")  # nothing happens
        seen.clear()
        for i in range(0, len(data), size):
            s.feed(data[i : i + size])
        assert seen == [(b"a", b"1"), (b"big/topic", big), (b"b", b"2")], size
        assert frames(wire(s)) == [(0x40, b"\x00\x09"), (0x50, b"\x00\x0a")]
        s.feed(ack(0x62, 10))
        wire(s)
    assert s.rn == 0 and s.big is None


def test_the_receive_buffer_is_read_into_directly() -> None:
    s = connected(Session("dev", bufsize=32))
    seen: list[bytes] = []
    s.cb = lambda t, m: seen.append(m)
    data = pub(2, 5, b"t", b"x" * 100)
    while data:
        room = s.room()
        n = min(len(room), len(data), 13)
        room[:n] = data[:n]
        data = data[n:]
        s.received(n)
    assert seen == [b"x" * 100] and frames(wire(s)) == [(0x40, b"\x00\x05")]


def test_payloads_larger_than_the_send_buffer_are_written_by_reference() -> None:
    s = connected(Session("dev", bufsize=64))
    msg = b"p" * 1000
    s.publish("t", msg, qos=1)
    s.publish("t", "small", qos=1)
    out = s.take(0)
    assert out[-1] is msg  # not copied
    first = frames(b"".join(bytes(b) for b in out))
    assert [b[-5:] for _, b in first] == [b"ppppp"]  # the small one waits for the next take
    [(f, body)] = frames(wire(s))
    assert f == 0x32 and body.endswith(b"small")


def test_acks_never_get_lost_when_the_send_buffer_is_full() -> None:
    s = connected(Session("dev", bufsize=16))
    s.cb = lambda t, m: None
    s.feed(b"".join(pub(2, i, b"t", b"m") for i in range(1, 40)))
    assert frames(wire(s)) == [(0x40, struct.pack("!H", i)) for i in range(1, 40)]


def test_a_packet_too_large_for_memory_is_skipped_and_acknowledged(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    import edge_client.session as session_module

    s = connected(Session("dev", bufsize=32))
    seen: list[bytes] = []
    s.cb = lambda t, m: seen.append(m)
    real = builtins.bytearray

    def no_memory(n: int = 0, *a):  # type: ignore[no-untyped-def]
        if isinstance(n, int) and n > 200:
            raise MemoryError
        return real(n, *a)

    monkeypatch.setattr(session_module, "bytearray", no_memory, raising=False)
    s.feed(pub(2, 7, b"t", b"z" * 300) + pub(2, 8, b"t", b"after"))
    assert seen == [b"after"] and s.lost == 1
    assert frames(wire(s)) == [(0x40, b"\x00\x07"), (0x40, b"\x00\x08")]


def test_file_outbox_cut_at_every_byte_loads_the_state_of_the_last_whole_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut can stop a write anywhere: whatever prefix of the file survives, the
    outbox loads as it was after the last record written in full."""
    import edge_client.persist as persist

    monkeypatch.setattr(persist, "_sync", None)
    path = tmp_path / "box"
    s = FilePersist(str(path), "dev", 0, 0, True, 1)  # window of 3
    snapshots = [(0, everything(path))]

    def snap() -> None:
        snapshots.append((path.stat().st_size, everything(path)))

    for i, q in enumerate([0, 1, 2, 0, 1, 2, 1]):
        s.publish("t", f"m{i}", qos=q)
        snap()
    connected(s, clean=False)
    assert [f & 6 for f, _ in frames(wire(s))] == [0, 2]  # m0 (QoS 0, then gone), m1 in flight
    snap()
    s.feed(ack(0x40, s.q[0][0]))  # m1 done: the head moves (H)
    snap()
    assert [f & 6 for f, _ in frames(wire(s))] == [4, 0]  # m2, and m3 (QoS 0: then done, D)
    snap()
    pid2 = s.q[0][0]
    s.feed(ack(0x50, pid2))  # m2 released (R)
    snap()
    s.feed(publish_in(b"in", b"x", 2, pid=77))  # an incoming QoS 2 id (I)
    snap()
    wire(s)  # PUBREC for it, PUBREL for m2, m4
    snap()
    s.feed(ack(0x40, s.q[1][0]))  # m4 done while m2 waits for PUBCOMP (D)
    snap()
    s.feed(ack(0x70, pid2))  # m2 complete (H)
    snap()
    s.feed(ack(0x62, 77))  # the incoming id released (i)
    snap()
    size = path.stat().st_size
    data = path.read_bytes()
    assert {data[i] for i in range(len(data))} >= set(b"ARIDHi")  # every kind of record is in it
    cut_path = tmp_path / "cut"
    for cut in range(size + 1):
        cut_path.write_bytes(data[:cut])
        expected = [state for at, state in snapshots if at <= cut][-1]
        assert everything(cut_path) == expected, cut


def test_an_unbounded_outbox_needs_a_file(tmp_path: Path) -> None:
    from edge_client.aio import MQTTClient as AioClient
    from edge_client.client import MQTTClient

    for cls in (MQTTClient, AioClient):
        with pytest.raises(ValueError):
            cls("dev", "127.0.0.1", 1, outbox_size=0)  # RAM would grow without bound
        assert cls("dev", "127.0.0.1", 1, outbox_size=0, outbox=str(tmp_path / "box")).pending() == 0


def test_an_outbox_file_of_the_old_format_is_moved_aside_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "box"
    old = b"+" + struct.pack("!HBHI", 1, 2, 1, 3) + b"t" + b"old"  # the earlier "+" record
    path.write_bytes(old)
    s = FilePersist(str(path), "dev")
    assert s.q == [] and not path.exists()
    assert (tmp_path / "box.v1").read_bytes() == old
    s.publish("t", "new", qos=1)
    assert [e[3] for e in FilePersist(str(path), "dev").q] == [b"new"]
