"""Logging like mosquitto's: one timestamped line per event on stderr.

``2026-11-28 10:00:00 broker: New connection from 127.0.0.1:50312 ...``

Only the broker's own loggers (``broker`` and below) go down to INFO, or DEBUG
with ``-v``; libraries stay at WARNING so that a verbose broker log is not
drowned in the debug lines of libraries (asyncio, say).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER_NAME = "broker"


class BrokerFormatter(logging.Formatter):
    """``YYYY-mm-dd HH:MM:SS broker: [warning: ]message``; tracebacks follow on their own lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s broker: %(level_prefix)s%(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.level_prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return super().format(record)


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
