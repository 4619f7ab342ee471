"""Logging like mosquitto's: one timestamped line per event on stderr.

``2026-11-28 10:00:00 broker: New connection from 127.0.0.1:50312 ...``

Only the broker's own loggers (``broker`` and below) go down to INFO, or DEBUG
with ``-v``; libraries stay at WARNING so that a verbose broker log is not
drowned in aiosqlite's per-statement debug lines.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER_NAME = "broker"


def _escapes() -> dict[int, str]:
    """Control characters (C0, DEL, C1), line and paragraph separators and bidi overrides."""
    table = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
    for code in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)):
        table[code] = f"\\u{code:04x}"
    return table


_ESCAPES = _escapes()


def escape_controls(text: str) -> str:
    """``text`` with control characters as escapes: one log record stays one line, whatever
    a client put in its client id, username or topic (issue 15: forged log lines)."""
    if text.isprintable():
        return text  # the common case, checked in C
    return text.translate(_ESCAPES)


class BrokerFormatter(logging.Formatter):
    """``YYYY-mm-dd HH:MM:SS broker: [warning: ]message``; tracebacks follow on their own lines.

    The message itself never spans lines: control characters in it are escaped.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s broker: %(level_prefix)s%(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.level_prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class _BrokerHandler(logging.StreamHandler):
    """Marks the handler this module installed, so a second setup replaces it."""


def setup_logging(verbose: bool, stream: TextIO | None = None) -> None:
    """Send log records to stderr (or ``stream``): INFO, or DEBUG when ``verbose``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _BrokerHandler):
            root.removeHandler(handler)
    handler = _BrokerHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(BrokerFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG if verbose else logging.INFO)
