"""The service side of a running broker, wired by ``server/app.py``: systemd notify and
watchdog, the metrics/health listener, the control socket (backup, inspect), the SIGHUP
configuration reloader, and compaction after bursts of traffic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from broker.config import Config
from broker.config_file import ConfigError, load_config
from broker.core.engine import Engine
from broker.ops import control
from broker.ops.backup import backup_in_broker
from broker.ops.http import HealthServer
from broker.ops.inspect import snapshot_from_engine
from broker.ops.metrics import build_registry, exposition
from broker.ops.reload import config_reloader
from broker.ops.systemd import Notifier, watchdog
from broker.server.listeners import Listeners
from broker.storage.base import Storage
from broker.storage.factory import DB_FILE_NAME
from broker.storage.sqlite import SqliteStorage

log = logging.getLogger("broker")



class Service:
    """Everything around the engine that an operator or a supervisor talks to."""

    def __init__(self, config: Config, engine: Engine, storage: Storage, listeners: Listeners) -> None:
        self.config = config
        self.engine = engine
        self.storage = storage
        self.listeners = listeners
        self.sqlite = storage if isinstance(storage, SqliteStorage) else None
        self.db_path = os.path.join(config.data_dir, DB_FILE_NAME) if self.sqlite is not None else None
        self.notifier = Notifier()
        self.stopping = False
        self.health: HealthServer | None = None
        self.control: control.ControlServer | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def not_ready(self) -> list[str]:
        """Why the broker cannot serve (empty when it can): for /readyz and the watchdog."""
        problems = []
        if self.stopping:
            problems.append("shutting down")
        if self.engine.failure is not None:
            problems.append(f"last storage commit failed: {self.engine.failure}")
        if not self.listeners.is_serving():
            problems.append("MQTT listener is not accepting connections")
        return problems

    async def start(self, config_path: str | None, reloaders: list[Callable[[Config], None]]) -> None:
        """Start the listeners of the service side; raises OSError if one cannot listen."""
        if config_path is not None:
            try:
                at_start = load_config(config_path)
            except ConfigError:
                at_start = replace(self.config)
            reloaders.append(config_reloader(config_path, at_start))
        if self.config.metrics_enabled:
            registry = build_registry(self.engine, self.db_path, self.not_ready)
            self.health = HealthServer(lambda: exposition(registry), self.not_ready)
            host, port = await self.health.start(self.config.metrics_bind, self.config.metrics_port)
            log.info("metrics on http://%s:%d/metrics", host, port)
        if self.sqlite is not None:
            path = control.socket_path(self.config.data_dir)
            self.control = control.ControlServer({"inspect": self._inspect, "backup": self._backup})
            try:
                await self.control.start(path)
            except OSError as exc:  # e.g. a path longer than a Unix socket name may be
                log.warning("no control socket at %s (backup and inspect will not reach this broker): %s",
                            path, exc)
                self.control = None
            self.tasks.append(asyncio.ensure_future(self._compact_when_quiet()))
        self.tasks.append(asyncio.ensure_future(watchdog(self.notifier, lambda: not self.not_ready())))

    def ready(self, listening: str) -> None:
        self.notifier.notify("READY=1", f"STATUS=listening on {listening}", f"MAINPID={os.getpid()}")

    def begin_shutdown(self) -> None:
        self.stopping = True
        self.notifier.notify("STOPPING=1", "STATUS=shutting down")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.control is not None:
            await self.control.close()
        if self.health is not None:
            await self.health.close()
        self.notifier.close()

    async def _inspect(self, request: dict[str, Any]) -> control.Answer:
        return snapshot_from_engine(self.engine, self.db_path), None

    async def _backup(self, request: dict[str, Any]) -> control.Answer:
        assert self.sqlite is not None
        return await backup_in_broker(self.sqlite, self.config.data_dir)

    async def _compact_when_quiet(self) -> None:
        """Once commits stop for a while, shrink the database and empty the WAL — once per
        burst: an idle broker writes nothing."""
        assert self.sqlite is not None
        after = self.config.compact_after_idle
        if not after:
            return
        step = max(0.2, min(5.0, after / 4))
        stats = self.engine.stats
        seen = stats.commits
        compacted = True  # nothing written since start-up yet
        quiet = 0.0
        while True:
            await asyncio.sleep(step)
            if stats.commits != seen:
                seen, compacted, quiet = stats.commits, False, 0.0
                continue
            quiet += step
            if compacted or quiet < after or self.engine.failure is not None:
                continue
            compacted = True
            try:
                if await self.sqlite.compact():
                    log.debug("database compacted after %d s without writes", int(quiet))
            except Exception as exc:
                log.warning("compacting the database failed: %s", exc)
