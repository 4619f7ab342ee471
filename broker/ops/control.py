"""The control socket: how ``python -m broker backup`` and ``inspect`` reach a running broker.

The broker holds its database with an exclusive lock (a second broker must not
share it), so while it runs no other process can read the file, not even read-only.
Operator commands therefore ask the broker over a Unix socket in its data directory
(``control.sock``, mode 0600: whoever may read the database may ask). One JSON line
in, one JSON line out; a backup's bytes follow its answer line.

When no broker answers, the commands open the database file themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("broker")

SOCKET_NAME = "control.sock"
CHUNK = 256 * 1024
MAX_REQUEST = 64 * 1024

# A handler returns the answer, and optionally a file whose bytes follow it (then deleted).
Answer = tuple[dict[str, Any], str | None]
Handler = Callable[[dict[str, Any]], Awaitable[Answer]]


def socket_path(data_dir: str) -> str:
    return os.path.join(data_dir, SOCKET_NAME)


class ControlServer:
    """Serves commands by name; one request per connection."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.server: asyncio.Server | None = None
        self.path: str | None = None

    async def start(self, path: str) -> None:
        # Storage is open (exclusively) by now, so a socket file left here is a dead broker's.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old_umask = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._handle, path, limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        self.path = path

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attachment: str | None = None
        try:
            request = json.loads(await reader.readline())
            handler = self.handlers.get(str(request.get("command")))
            if handler is None:
                answer: dict[str, Any] = {"error": f"unknown command {request.get('command')!r}"}
            else:
                try:
                    answer, attachment = await handler(request)
                except Exception as exc:
                    log.exception("control command %s failed", request.get("command"))
                    answer = {"error": str(exc) or type(exc).__name__}
            if attachment is not None:
                answer["size"] = os.path.getsize(attachment)
            writer.write(json.dumps(answer).encode() + b"\n")
            if attachment is not None:
                with open(attachment, "rb") as stream:
                    while chunk := stream.read(CHUNK):
                        writer.write(chunk)
                        await writer.drain()
            await writer.drain()
        except (ConnectionError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if attachment is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(attachment)
            writer.close()


class BrokerNotRunning(Exception):
    """No broker answers on the control socket."""


def request(path: str, command: dict[str, Any], attachment_to: str | None = None,
            timeout: float = 600.0) -> dict[str, Any]:
    """Send one command (blocking: the operator commands are plain scripts).

    With ``attachment_to``, bytes that follow the answer are written to that file.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise BrokerNotRunning(f"no broker answers on {path}: {exc.strerror}") from None
        sock.sendall(json.dumps(command).encode() + b"\n")
        stream = sock.makefile("rb")
        line = stream.readline()
        if not line:
            raise ConnectionError(f"the broker closed {path} without answering")
        answer: dict[str, Any] = json.loads(line)
        size = answer.get("size")
        if attachment_to is not None and isinstance(size, int):
            left = size
            with open(attachment_to, "wb") as out:
                while left > 0:
                    chunk = stream.read(min(CHUNK, left))
                    if not chunk:
                        raise ConnectionError(f"the broker stopped after {size - left} of {size} bytes")
                    out.write(chunk)
                    left -= len(chunk)
        return answer
    finally:
        sock.close()
