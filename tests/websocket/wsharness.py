"""An in-process broker for WebSocket tests: one Engine on MemoryStorage, on a loop in a thread.

It listens with ``WebSocketProtocol`` (and, on another port, with the plain TCP
``MQTTProtocol`` of the same engine, so that a test can cross the two), on 127.0.0.1 with
ports the OS chose. Tests talk to it with real clients over real sockets.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker import certs
from broker.config import Config
from broker.core.engine import Engine
from broker.core.transport import ListenerInfo
from broker.server.transport import MQTTProtocol
from broker.server.websocket import WebSocketProtocol
from broker.storage.memory import MemoryStorage
from brokerprocess import BrokerProcess

WS_LISTENER = ListenerInfo(name="websockets 127.0.0.1", protocol="websockets")


@dataclass
class Address:
    host: str
    port: int


class InProcessBroker:
    """Start with ``start()``, stop with ``stop()``; ``ws`` and ``tcp`` are the two addresses."""

    def __init__(
        self,
        config: Config | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **websocket_options: Any,
    ) -> None:
        self.config = config or Config(backend="memory")
        self.ssl_context = ssl_context
        self.websocket_options = websocket_options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ws-broker", daemon=True)
        self.engine: Engine | None = None
        self.servers: list[asyncio.Server] = []
        self.ws = Address("127.0.0.1", 0)
        self.tcp = Address("127.0.0.1", 0)
        self.ticker: asyncio.Task[None] | None = None

    def call(self, fn: Callable[[], Any], timeout: float = 10) -> Any:
        """Run ``fn`` on the broker's loop and return its result."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    async def _start(self) -> None:
        storage = MemoryStorage()
        await storage.open()
        engine = self.engine = Engine(self.config, storage)
        await engine.start()
        ws_listener = WS_LISTENER if self.ssl_context is None else ListenerInfo(
            name="websockets tls 127.0.0.1", protocol="websockets", tls=True
        )
        ws_server = await self.loop.create_server(
            lambda: WebSocketProtocol(engine, ws_listener, **self.websocket_options),
            "127.0.0.1", 0, ssl=self.ssl_context,
        )
        tcp_server = await self.loop.create_server(lambda: MQTTProtocol(engine), "127.0.0.1", 0)
        self.servers = [ws_server, tcp_server]
        self.ws.port = ws_server.sockets[0].getsockname()[1]
        self.tcp.port = tcp_server.sockets[0].getsockname()[1]

        async def tick() -> None:
            while True:
                await asyncio.sleep(0.2)
                engine.tick(time.time())

        self.ticker = asyncio.ensure_future(tick())

    async def _stop(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
        for server in self.servers:
            server.close()
        if self.engine is not None:
            await self.engine.shutdown()
        for server in self.servers:
            await server.wait_closed()

    def start(self) -> InProcessBroker:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(20)
        return self

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(20)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(20)
            self.loop.close()

    def connection_count(self) -> int:
        engine = self.engine
        assert engine is not None
        return int(self.call(lambda: len(engine.connections)))


# ---- the broker process with WebSocket listeners ------------------------------------------

WEBSOCKET_LISTENING = re.compile(
    r"broker: websockets (?P<tls>over TLS )?.*listening on (?P<host>[0-9.]+):(?P<port>\d+)$", re.MULTILINE
)


def websocket_config(cert_dir: certs.CertPaths | None = None, extra: str = "") -> str:
    """``[[listener]]`` tables: plain MQTT, ws, and with ``cert_dir`` wss (ports the OS picks)."""
    text = '[[listener]]\nport = 0\n\n[[listener]]\nport = 0\nprotocol = "websockets"\n' + extra
    if cert_dir is not None:
        text += (
            '\n[[listener]]\nport = 0\nprotocol = "websockets"\n'
            f'certfile = "{cert_dir.server_cert}"\nkeyfile = "{cert_dir.server_key}"\n' + extra
        )
    return text


def websocket_addresses(broker: BrokerProcess, tls: bool, timeout: float = 10.0) -> dict[str, Address]:
    """{"ws": ..., "wss": ...} (``tls``) as the broker logged its WebSocket listeners."""
    wanted = {"ws", "wss"} if tls else {"ws"}
    deadline = time.monotonic() + timeout
    while True:
        found = {
            ("wss" if match["tls"] else "ws"): Address(match["host"], int(match["port"]))
            for match in WEBSOCKET_LISTENING.finditer(broker.log())
        }
        if wanted <= found.keys():
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {wanted} listeners logged:\n{broker.log()}")
        time.sleep(0.02)
