"""systemd's notify protocol (``sd_notify``) with the standard library only.

Under ``Type=notify`` systemd waits for ``READY=1`` before it counts the service as
started, and with ``WatchdogSec=`` it restarts the service when ``WATCHDOG=1`` pings
stop. The protocol is one datagram per message on the AF_UNIX socket named by
``NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket). Outside systemd the
variable is unset and every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("broker")


def socket_address(name: str) -> str | bytes:
    """The address ``NOTIFY_SOCKET`` names: a path, or an abstract name for ``@name``."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


class Notifier:
    """Sends state lines to systemd; silent (and harmless) when not started by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = socket_address(name) if name else None
        self.watchdog_seconds = watchdog_seconds(env)
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *states: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False if not under systemd or it failed."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(states).encode(), self.address)
        except OSError as exc:
            log.warning("cannot notify systemd at %r: %s", self.address, exc)
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog timeout systemd set for this process (``WATCHDOG_USEC``), or None.

    ``WATCHDOG_PID``, when set, names the process meant; a child that inherited the
    environment must not ping in its parent's name.
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


async def watchdog(notifier: Notifier, healthy: Callable[[], bool]) -> None:
    """Ping at half the watchdog timeout while ``healthy()``: a blocked event loop or a
    failed broker stops the pings, and systemd restarts the service."""
    timeout = notifier.watchdog_seconds
    if timeout is None:
        return
    while True:
        if healthy():
            notifier.notify("WATCHDOG=1")
        await asyncio.sleep(timeout / 2)
