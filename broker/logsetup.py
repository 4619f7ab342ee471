"""Logging like mosquitto's: one timestamped line per event on stderr.

``2026-11-28 10:00:00 broker: New connection from 127.0.0.1:50312 ...``

Only the broker's own loggers (``broker`` and below) go down to INFO, or DEBUG
with ``-v``; libraries stay at WARNING so that a verbose broker log is not
drowned in the debug lines of libraries (asyncio, say).

Under systemd the journal adds its own timestamps, and it reads a ``<N>`` prefix
(the syslog priority) so that ``journalctl -p err`` works: ``<3>broker: error: ...``.
"""

from __future__ import annotations

import logging
import os
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


# syslog priorities (RFC 5424) of the logging levels, as sd-daemon(3) prefixes.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7  # debug


class JournalFormatter(logging.Formatter):
    """``<6>broker: message``: no timestamp (the journal has one), the priority for ``-p``."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        text = f"broker: {prefix}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        priority = f"<{syslog_priority(record.levelno)}>"
        # Every line of a traceback keeps the priority, or the journal files it as info.
        return "\n".join(priority + line for line in text.splitlines())


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when stderr is the journal stream systemd connected (``JOURNAL_STREAM=dev:inode``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        fd = (stream or sys.stderr).fileno()
        st = os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def use_priority_prefix(setting: str, stream: TextIO | None = None) -> bool:
    """The ``[log] priority_prefix`` setting: "on", "off", or "auto" (when stderr is the journal)."""
    if setting == "auto":
        return stderr_is_journal(stream)
    return setting == "on"


class _BrokerHandler(logging.StreamHandler):
    """Marks the handler this module installed, so a second setup replaces it."""


def setup_logging(verbose: bool, stream: TextIO | None = None, priority_prefix: bool = False) -> None:
    """Send log records to stderr (or ``stream``): INFO, or DEBUG when ``verbose``;
    journal style (``<N>`` prefixes, no timestamps) with ``priority_prefix``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _BrokerHandler):
            root.removeHandler(handler)
    handler = _BrokerHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JournalFormatter() if priority_prefix else BrokerFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    set_verbose(verbose)


def set_verbose(verbose: bool) -> None:
    """The broker's log level; also what a SIGHUP reload changes."""
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG if verbose else logging.INFO)
