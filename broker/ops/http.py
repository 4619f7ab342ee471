"""The metrics and health listener: a small HTTP/1.1 server on the broker's event loop.

``/healthz`` answers only if the event loop runs, which is what liveness means here;
``/readyz`` lists what keeps the broker from serving; ``/metrics`` is Prometheus'
text format. Each request is answered and the connection closed: scrapers and
health checkers need nothing more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger("broker")

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 10.0

Response = tuple[int, str, bytes]  # status, content type, body
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
            503: "Service Unavailable"}
TEXT = "text/plain; charset=utf-8"


class HealthServer:
    """Routes GET /metrics, /healthz and /readyz."""

    def __init__(self, metrics: Callable[[], bytes], ready: Callable[[], list[str]]) -> None:
        self.metrics = metrics
        self.ready = ready
        self.server: asyncio.Server | None = None

    def respond(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return 405, TEXT, b"only GET and HEAD\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics()
        if path == "/healthz":
            return 200, TEXT, b"ok\n"
        if path == "/readyz":
            problems = self.ready()
            if problems:
                return 503, TEXT, "".join(f"{p}\n" for p in problems).encode()
            return 200, TEXT, b"ready\n"
        return 404, TEXT, b"not found; try /metrics, /healthz or /readyz\n"

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(
            self._handle, host, port, reuse_address=True, limit=MAX_REQUEST_HEAD
        )
        address = self.server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, ctype, body = 400, TEXT, b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, ctype, body = self.respond(method, parts[1])
            header = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(header if method == "HEAD" else header + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics listener: request failed")
        finally:
            writer.close()
