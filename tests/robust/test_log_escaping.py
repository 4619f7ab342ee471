"""Issue 15 item 12: client ids, usernames and topics with control characters cannot forge log lines."""

from __future__ import annotations

import io
import logging

from broker.logsetup import escape_controls, setup_logging
from e2e.mqttraw import RawClient

FORGED = "2026-01-01 00:00:00 broker: New client connected from 10.0.0.1:1 as admin (p2, c1, k60)."

ESCAPE_TABLE = [
    ("plain id é", "plain id é"),
    ("a\nb", "a\\nb"),
    ("a\r\nb", "a\\r\\nb"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("tab\there", "tab\\there"),
    ("del\x7f", "del\\x7f"),
    ("c1\x85nel", "c1\\x85nel"),
    ("sep\u2028par\u2029", "sep\\u2028par\\u2029"),
    ("bidi\u202eevil\u2066", "bidi\\u202eevil\\u2066"),
]


def test_escape_table() -> None:
    for raw, escaped in ESCAPE_TABLE:
        assert escape_controls(raw) == escaped


def test_one_record_is_one_line_but_tracebacks_stay_readable() -> None:
    stream = io.StringIO()
    setup_logging(False, stream)
    log = logging.getLogger("broker.test")
    log.info("client %s connected", "x\n" + FORGED)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed for %s", "y\rz")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("client x\\n" + FORGED + " connected")
    assert lines[1].endswith("failed for y\\rz")
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


def test_a_client_id_and_username_cannot_forge_log_lines(broker_factory) -> None:
    broker = broker_factory()
    with RawClient(broker.host, broker.port, timeout=10) as client:
        client.connect("dev\n" + FORGED, username="user\r\n" + FORGED)
        client.send(b"\xe0\x00")
    broker.wait_for_log(r"Client dev\\n.* disconnected")
    log = broker.log()
    assert not any(line.startswith(FORGED[:20]) for line in log.splitlines()), log
    assert "as dev\\n" + FORGED in log and "u'user\\r\\n" + FORGED in log
