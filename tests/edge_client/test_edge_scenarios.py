"""edge_client end to end: each program runs under MicroPython and CPython, against
mosquitto and our broker, over real loopback sockets, with paho-mqtt as the peer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from brokerprocess import free_port
from edge_harness import EdgeBroker, Peer, Runtime


def client_id(runtime: Runtime, broker: EdgeBroker, name: str) -> str:
    return f"{name}-{runtime.name[:5]}-{broker.kind[:4]}-{os.getpid()}"


def dead_port() -> int:
    """A port nobody listens on: the broker is 'unreachable'."""
    return free_port()


def test_qos_0_1_2_both_ways(runtime: Runtime, edge_broker: EdgeBroker) -> None:
    cid = client_id(runtime, edge_broker, "qos")
    host, port = edge_broker.host, edge_broker.port
    peer = Peer(host, port, "peer-" + cid)
    peer.subscribe(f"edge/{cid}/out/#", 2)
    prog = runtime.start("qos_both_ways.py", host, port, cid, 3)
    prog.expect("READY")
    for q in (0, 1, 2):
        peer.publish(f"edge/{cid}/in/q{q}", f"to-device-{q}", qos=q)
    lines = prog.finish()
    assert "SUBACK 2" in lines and "FLUSHED True" in lines and "DONE 3" in lines, prog.output()
    assert sorted(prog.got()) == [(f"edge/{cid}/in/q{q}", q, 0, f"to-device-{q}") for q in (0, 1, 2)]
    peer.wait_for(4)
    got = sorted((t, q, p) for t, q, _, p in peer.settle(0.3))
    assert got == sorted(
        [(f"edge/{cid}/out/q{q}", q, f"payload-{q}".encode()) for q in (0, 1, 2)]
        + [(f"edge/{cid}/out/bin", 2, bytes(range(256)))]
    )
    peer.close()


def test_retained_both_ways(runtime: Runtime, edge_broker: EdgeBroker) -> None:
    cid = client_id(runtime, edge_broker, "ret")
    host, port = edge_broker.host, edge_broker.port
    peer = Peer(host, port, "peer-" + cid)
    peer.publish(f"edge/{cid}/retained/in", "old news", qos=1, retain=True)
    prog = runtime.run("retained.py", host, port, cid)
    assert prog.got() == [(f"edge/{cid}/retained/in", 1, 1, "old news")], prog.output()
    late = Peer(host, port, "late-" + cid)
    late.subscribe(f"edge/{cid}/retained/out", 1)
    assert late.wait_for(1) == [(f"edge/{cid}/retained/out", 1, 1, b"kept")]
    peer.close()
    late.close()


def test_last_will_on_abrupt_loss(runtime: Runtime, edge_broker: EdgeBroker) -> None:
    cid = client_id(runtime, edge_broker, "will")
    host, port = edge_broker.host, edge_broker.port
    peer = Peer(host, port, "peer-" + cid)
    peer.subscribe(f"edge/{cid}/will", 1)
    prog = runtime.start("will.py", host, port, cid)
    prog.expect("READY")
    assert peer.settle(0.2) == []
    prog.kill()  # no DISCONNECT: the broker must publish the will
    assert peer.wait_for(1) == [(f"edge/{cid}/will", 1, 0, b"gone")]
    peer.close()


def test_persistent_session_gets_messages_sent_while_offline(runtime: Runtime, edge_broker: EdgeBroker) -> None:
    cid = client_id(runtime, edge_broker, "pers")
    host, port = edge_broker.host, edge_broker.port
    first = runtime.run("persistent.py", host, port, cid, "subscribe")
    assert first.lines[:2] == ["PRESENT 0", "SUBACK 2"], first.output()
    peer = Peer(host, port, "peer-" + cid)
    expected = []
    for i in range(6):
        q = 1 + i % 2
        peer.publish(f"edge/{cid}/cmd/{i}", f"command {i}", qos=q)
        expected.append((f"edge/{cid}/cmd/{i}", q, 0, f"command {i}"))
    second = runtime.run("persistent.py", host, port, cid, "collect", 6)
    assert "PRESENT 1" in second.lines, second.output()  # (messages may arrive during connect)
    assert sorted(second.got()) == expected  # each exactly once
    peer.close()


def _stream_across_a_broker_restart(
    runtime: Runtime, edge_broker: EdgeBroker, tag: str, program: str, n_out: int, n_in: int, restart_at: int
):
    """Start a streaming program, send it half of ``n_in`` QoS 2 messages, restart the broker
    once it has sent message ``restart_at`` of its ``n_out``, then send the other half.
    Returns (cid, sub, pub, prog)."""
    cid = client_id(runtime, edge_broker, tag)
    host, port = edge_broker.host, edge_broker.port
    sub = Peer(host, port, "sub-" + cid, clean_session=False)
    sub.subscribe(f"edge/{cid}/out", 2)
    pub = Peer(host, port, "pub-" + cid, clean_session=False)
    prog = runtime.start(program, host, port, cid, n_out, n_in, 40)
    prog.expect("READY")
    for i in range(n_in // 2):
        pub.publish(f"edge/{cid}/in", f"in {i}", qos=2)
    prog.expect(f"SENT {restart_at}")
    edge_broker.restart()
    pub.wait_connected()
    sub.wait_connected()
    for i in range(n_in // 2, n_in):
        pub.publish(f"edge/{cid}/in", f"in {i}", qos=2)
    return cid, sub, pub, prog


def test_broker_restart_mid_stream_loses_and_duplicates_nothing_at_qos2(
    runtime: Runtime, edge_broker: EdgeBroker
) -> None:
    n_out, n_in = 30, 10
    cid, sub, pub, prog = _stream_across_a_broker_restart(runtime, edge_broker, "strm", "stream.py", n_out, n_in, 10)
    prog.finish(70)
    assert prog.lines[-1] == f"DONE 0 {n_in}", prog.output()
    assert prog.lines[-2] != "RECONNECTS 0", prog.output()  # the restart really cut it off
    sub.wait_for(n_out, timeout=20)
    out = [p.decode() for _, _, _, p in sub.settle(0.5)]
    assert sorted(out, key=lambda s: int(s.split()[1])) == [f"seq {i}" for i in range(n_out)], out
    got = [p for _, _, _, p in prog.got()]
    assert sorted(got, key=lambda s: int(s.split()[1])) == [f"in {i}" for i in range(n_in)], prog.output()
    sub.close()
    pub.close()


def test_outbox_delivers_in_order_after_an_outage(runtime: Runtime, edge_broker: EdgeBroker) -> None:
    cid = client_id(runtime, edge_broker, "outg")
    host, port = edge_broker.host, edge_broker.port
    sub = Peer(host, port, "sub-" + cid, clean_session=False)
    sub.subscribe(f"edge/{cid}/readings", 1)
    sub.close()
    edge_broker.stop()
    prog = runtime.start("outbox.py", host, port, cid, 20, "-", "deliver")
    prog.expect("OFFLINE")
    prog.expect("QUEUED 20")
    edge_broker.start()
    prog.finish(40)
    assert "FLUSHED True" in prog.lines and "DONE 0" in prog.lines, prog.output()
    back = Peer(host, port, "sub-" + cid, clean_session=False)
    msgs = back.wait_for(20)
    assert [p.decode() for _, _, _, p in msgs] == [f"reading {i}" for i in range(20)]
    back.close()


def test_outbox_file_survives_a_restart_of_the_program(
    runtime: Runtime, edge_broker: EdgeBroker, tmp_path: Path
) -> None:
    cid = client_id(runtime, edge_broker, "file")
    host, port = edge_broker.host, edge_broker.port
    path = tmp_path / "outbox.bin"
    first = runtime.run("outbox.py", "127.0.0.1", dead_port(), cid, 15, path, "exit")
    assert [x for x in first.lines if not x.startswith("HEAP")] == ["OFFLINE 0", "QUEUED 15", "EXIT"], first.output()
    assert path.stat().st_size > 15 * len("reading 00")
    sub = Peer(host, port, "sub-" + cid)
    sub.subscribe(f"edge/{cid}/readings", 1)
    second = runtime.run("outbox.py", host, port, cid, 0, path, "deliver")
    assert "DONE 0" in second.lines, second.output()
    msgs = sub.wait_for(15)
    assert [p.decode() for _, _, _, p in msgs] == [f"reading {i}" for i in range(15)]
    assert path.stat().st_size == 0  # emptied once everything was acknowledged
    sub.close()


def test_asyncio_client_across_a_broker_restart(runtime: Runtime, edge_broker: EdgeBroker) -> None:
    n_out, n_in = 20, 6
    cid, sub, pub, prog = _stream_across_a_broker_restart(runtime, edge_broker, "aio", "aio_stream.py", n_out, n_in, 6)
    prog.expect("UNSUBSCRIBED", timeout=70)
    pub.publish(f"edge/{cid}/in", "after unsubscribe", qos=1)
    prog.finish(30)
    assert prog.lines[-1] == f"DONE 0 {n_in}", prog.output()
    assert prog.lines[-2] != "RECONNECTS 0", prog.output()
    sub.wait_for(n_out + 2, timeout=20)
    out = sorted(p.decode() for _, _, _, p in sub.settle(0.5))
    assert out == sorted([f"seq {i}" for i in range(n_out)] + ["seq q0", "seq q1"])
    got = sorted(p for _, _, _, p in prog.got())
    assert got == sorted(f"in {i}" for i in range(n_in)), prog.output()
    sub.close()
    pub.close()


def test_subscriptions_are_made_again_when_the_broker_lost_the_session(
    runtime: Runtime, edge_broker: EdgeBroker
) -> None:
    cid = client_id(runtime, edge_broker, "resub")
    host, port = edge_broker.host, edge_broker.port
    prog = runtime.start("resubscribe.py", host, port, cid, 2)
    prog.expect("READY")
    peer = Peer(host, port, "peer-" + cid)
    peer.publish(f"edge/{cid}/x", "before", qos=1)
    prog.expect("GOT")
    edge_broker.restart()
    peer.wait_connected()
    # Retained: it arrives whether the client subscribes again before or after this.
    peer.publish(f"edge/{cid}/x", "after restart", qos=1, retain=True)
    prog.finish(40)
    assert [p for _, _, _, p in prog.got()] == ["before", "after restart"], prog.output()
    peer.close()


@pytest.fixture(params=["mosquitto", "ours"])
def unlimited_broker(request: pytest.FixtureRequest, mosquitto_factory: Any, broker_factory: Any) -> EdgeBroker:
    """A broker whose queue per session has no limit: a subscriber that falls behind a
    burst of 2,000 must not lose messages to the broker's own bound (1000 by default)."""
    only = os.environ.get("EDGE_BROKER")
    if only and only != request.param:
        pytest.skip(f"EDGE_BROKER={only}")
    if request.param == "mosquitto":
        return EdgeBroker("mosquitto", mosquitto_factory(persistence=True, config="max_queued_messages 0\n"))
    proc = broker_factory("--port", str(free_port()), config="[limits]\nmax_queued_messages = 0\n")
    return EdgeBroker("ours", proc)


def test_2000_readings_queued_during_an_outage_on_a_64k_heap_are_all_delivered(
    mpy_lib: Path, unlimited_broker: EdgeBroker, tmp_path: Path
) -> None:
    """The file outbox keeps only its head in RAM: the backlog is bounded by flash, not heap."""
    edge_broker = unlimited_broker
    unix = Runtime("micropython", mpy_lib, tmp_path)
    cid = client_id(unix, edge_broker, "2000")
    host, port = edge_broker.host, edge_broker.port
    sub = Peer(host, port, "sub-" + cid, clean_session=False)
    sub.subscribe(f"edge/{cid}/readings", 1)
    edge_broker.stop()
    try:
        go = tmp_path / "go"
        prog = unix.start("outbox.py", host, port, cid, 2000, tmp_path / "outbox.bin", "deliver", 2000, 120000, go)
        prog.expect("OFFLINE")
        queued = prog.expect("QUEUED", timeout=120)
        heap_queued = int(prog.expect("HEAP queued").split()[2])
        sub.wait_disconnected()
        edge_broker.start()
        sub.wait_connected()
        go.touch()  # the subscriber is back
        prog.finish(180)
        assert queued == "QUEUED 2000" and prog.lines[-3:-1] == ["FLUSHED True", "DONE 0"], prog.output()
        msgs = sub.wait_for(2000, timeout=60)
        assert [p.decode() for _, _, _, p in msgs] == [f"reading {i}" for i in range(2000)]
        # 2,000 readings of ~30 bytes would take >100 KB in RAM; the window holds 10
        assert heap_queued < 40 * 1024, prog.output()
        assert (tmp_path / "outbox.bin").stat().st_size == 0
    finally:
        unix.cleanup()
        sub.close()


def test_memory_error_inside_the_client_is_handled_and_the_next_call_works(
    mpy_lib: Path, edge_broker: EdgeBroker, tmp_path: Path
) -> None:
    """With no heap left, publish() returns and connect() raises OSError; with nearly all
    of a 64 KB heap taken, a message too large for the rest comes in: the client drops
    it, says so, and neither step() nor later calls raise MemoryError."""
    unix = Runtime("micropython", mpy_lib, tmp_path)
    try:
        prog = unix.run("oom.py", edge_broker.host, edge_broker.port, client_id(unix, edge_broker, "oom"), timeout=60)
    finally:
        unix.cleanup()
    lines = prog.lines
    assert any(x in lines for x in ("PUB NO MEMORY True", "PUB NO MEMORY False")), prog.output()
    assert any(x in lines for x in ("CONNECT NO MEMORY OSError", "CONNECT NO MEMORY ok")), prog.output()
    assert "PUBLISHED True" in lines and lines[-1] == "DONE", prog.output()
    assert any(x.startswith("edge_client: no memory for a") and x.endswith("dropped") for x in lines), prog.output()
    assert int(next(x for x in lines if x.startswith("LOST")).split()[1]) >= 1, prog.output()
    assert "GOT 5" in lines, prog.output()  # the next message after memory came back


def test_full_outbox_blocks_or_raises_as_the_caller_chooses(runtime: Runtime, edge_broker: EdgeBroker) -> None:
    cid = client_id(runtime, edge_broker, "full")
    peer = Peer(edge_broker.host, edge_broker.port, "peer-" + cid)
    peer.subscribe(f"edge/{cid}/full", 1)
    prog = runtime.run("full.py", edge_broker.host, edge_broker.port, cid, 40)
    assert prog.lines == ["FLUSHED True DROPPED 0", "REFUSED False", "RAISED", "RAISED", "DONE 3"], prog.output()
    assert [p.decode() for _, _, _, p in peer.wait_for(40)] == [f"m {i}" for i in range(40)]
    peer.close()


def test_kill_9_storm_with_the_file_outbox_loses_nothing_and_duplicates_no_qos2_message(
    mpy_lib: Path, edge_broker: EdgeBroker, tmp_path: Path
) -> None:
    """The device program is killed at random moments (no close, no flush) and started
    again; every reading arrives, and only a reading published again by the program
    itself (killed between its publish and saving its counter) may arrive twice."""
    import random
    import time

    rnd = random.Random(int(os.environ.get("KILL9_SEED", "14")))
    unix = Runtime("micropython", mpy_lib, tmp_path)
    cid = client_id(unix, edge_broker, "kill9")
    sub = Peer(edge_broker.host, edge_broker.port, "sub-" + cid, clean_session=False)
    sub.subscribe(f"edge/{cid}/seq", 2)
    n, kills = 300, 8
    box = tmp_path / "outbox.bin"
    starts = []
    try:
        for _ in range(kills):
            prog = unix.start("killable.py", edge_broker.host, edge_broker.port, cid, box, n)
            starts.append(tuple(int(x) for x in prog.expect("START").split()[1:]))
            time.sleep(rnd.uniform(0.1, 0.6))
            prog.kill()
        prog = unix.start("killable.py", edge_broker.host, edge_broker.port, cid, box, n)
        prog.finish(120)
        assert prog.lines[-1] == "DONE 0", prog.output()
        sub.wait_for(n, timeout=30)
        seqs = [int(p.split()[1]) for _, _, _, p in sub.settle(1.0)]
    finally:
        unix.cleanup()
        sub.close()
    print("(counter, pending) at each start:", starts)
    assert len({s for s, _ in starts if s < n}) >= kills // 2, starts  # the kills hit mid-stream
    assert sorted(set(seqs)) == list(range(n)), seqs
    assert len(seqs) - n <= kills, seqs


def test_asyncio_client_full_outbox_blocks_or_raises(runtime: Runtime, edge_broker: EdgeBroker) -> None:
    cid = client_id(runtime, edge_broker, "afull")
    peer = Peer(edge_broker.host, edge_broker.port, "peer-" + cid)
    peer.subscribe(f"edge/{cid}/full", 1)
    prog = runtime.run("aio_full.py", edge_broker.host, edge_broker.port, cid, 30, timeout=20)
    assert prog.lines == ["FLUSHED True DROPPED 0", "REFUSED False", "RAISED", "RAISED", "DONE 3"], prog.output()
    assert [p.decode() for _, _, _, p in peer.wait_for(30)] == [f"m {i}" for i in range(30)]
    peer.close()
