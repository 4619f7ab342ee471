"""Issue 15 item 11: the CONNECT timeout is a deadline, not reset by each byte that trickles in."""

from __future__ import annotations

import socket
import time

from bench.robustness import connect


def test_a_trickled_connect_is_closed_at_the_deadline(broker_factory, canary_factory) -> None:
    broker = broker_factory(config="[limits]\nconnect_timeout = 2\n")
    canary = canary_factory(broker.port)
    packet = connect("slow")
    sock = socket.create_connection((broker.host, broker.port), timeout=10)
    started = time.monotonic()
    closed_after = None
    try:
        for byte in packet[:-1]:  # never complete; a byte every 0.4 s kept the old timer from firing
            sock.sendall(bytes([byte]))
            time.sleep(0.4)
            if time.monotonic() - started > 8:
                break
    except OSError:
        closed_after = time.monotonic() - started
    if closed_after is None:
        sock.settimeout(8)
        try:
            data = sock.recv(10)
        except ConnectionResetError:
            data = b""
        assert data == b"", "the broker answered a CONNECT that never completed"
        closed_after = time.monotonic() - started
    sock.close()
    canary.stop().check()
    assert closed_after < 5.0, f"closed after {closed_after:.1f} s"
    broker.wait_for_log("no CONNECT within 2 s")


def test_a_complete_connect_just_in_time_is_accepted(broker_factory) -> None:
    broker = broker_factory(config="[limits]\nconnect_timeout = 3\n")
    packet = connect("on-time")
    with socket.create_connection((broker.host, broker.port), timeout=10) as sock:
        sock.sendall(packet[:3])
        time.sleep(1.0)
        sock.sendall(packet[3:])
        assert sock.recv(4) == b"\x20\x02\x00\x00"
