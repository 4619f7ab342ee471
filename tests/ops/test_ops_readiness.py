"""/readyz names what keeps the broker from serving; /healthz only needs the event loop.
In-process (a real engine, storage and listeners) so that failures can be provoked."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broker.config import Config
from broker.core.engine import Engine
from broker.ops.runtime import Service
from broker.server.transport import MQTTProtocol
from broker.storage.factory import open_storage
from ops_helpers import http_get


async def _started(tmp_path: Path) -> tuple[Service, Engine, asyncio.Server, str]:
    config = Config(port=0, data_dir=str(tmp_path / "data"), metrics_enabled=True, metrics_port=0)
    storage = await open_storage(config)
    engine = Engine(config, storage)
    await engine.start()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MQTTProtocol(engine), "127.0.0.1", 0)
    service = Service(config, engine, storage, server)
    await service.start(None, [])
    assert service.health is not None and service.health.server is not None
    port = service.health.server.sockets[0].getsockname()[1]
    return service, engine, server, f"http://127.0.0.1:{port}"


def test_readyz_reports_a_failed_commit_a_closed_listener_and_shutdown(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, engine, server, base = await _started(tmp_path)
        try:
            assert await asyncio.to_thread(http_get, base + "/readyz") == (200, "ready\n")
            engine.failure = OSError(28, "No space left on device")
            status, body = await asyncio.to_thread(http_get, base + "/readyz")
            assert status == 503 and "last storage commit failed" in body and "No space left" in body
            # Liveness is about the event loop only.
            assert await asyncio.to_thread(http_get, base + "/healthz") == (200, "ok\n")
            engine.failure = None
            server.close()
            await server.wait_closed()
            status, body = await asyncio.to_thread(http_get, base + "/readyz")
            assert (status, body) == (503, "MQTT listener is not accepting connections\n")
            service.begin_shutdown()
            status, body = await asyncio.to_thread(http_get, base + "/readyz")
            assert status == 503 and body.startswith("shutting down\n")
            samples_text = (await asyncio.to_thread(http_get, base + "/metrics"))[1]
            assert "edgemq_ready 0.0" in samples_text
        finally:
            await service.close()
            await engine.shutdown()

    asyncio.run(scenario())
