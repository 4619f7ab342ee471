"""Run the broker: open storage, listen, tick every TICK_SECONDS, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

from broker.bridge.bridge import Bridge, warn_about_orphans
from broker.auth import AuthConfigError, access_control_from_config, reload_access_control
from broker.config import Config
from broker.core.engine import Engine
from broker.ops.runtime import Service
from broker.server.listeners import ListenerError, Listeners
from broker.storage.base import CorruptDatabase
from broker.storage.factory import open_storage
from broker.storage.sqlite import DatabaseInUse, UnsupportedSchema

log = logging.getLogger("broker")

TICK_SECONDS = 0.5

# What SIGHUP re-reads (password and ACL files, certificates, ...): each is called with the
# running configuration, logs what it changed, and keeps the old state if the new one is bad.
Reloader = Callable[[Config], None]


def reload(config: Config, reloaders: list[Reloader]) -> None:
    """SIGHUP, as with mosquitto: re-read what can change without dropping connections."""
    log.info("reloading (SIGHUP)")
    for reloader in reloaders:
        try:
            reloader(config)
        except Exception:
            log.exception("reload failed; the previous state is kept")


async def serve(config: Config, stop: asyncio.Event | None = None, config_path: str | None = None) -> int:
    """Serve until ``stop`` is set or a SIGTERM/SIGINT arrives; returns the exit code.

    ``config_path``: the file SIGHUP re-reads.
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        access = access_control_from_config(config)  # AUTH: password and ACL files, before anything listens
    except AuthConfigError as exc:
        log.error("%s", exc)
        return 1
    try:
        storage = await open_storage(config)
    except (CorruptDatabase, DatabaseInUse, UnsupportedSchema) as exc:
        log.error("cannot open storage: %s", exc)
        access.close()
        return 1
    engine = Engine(config, storage)
    engine.auth = access
    reloaders: list[Reloader] = [lambda _config: reload_access_control(engine.auth)]  # AUTH
    engine.on_failure = stop.set
    await engine.start()
    try:  # before the "listening on" lines: a reload from then on must not kill the broker
        loop.add_signal_handler(signal.SIGHUP, lambda: reload(config, reloaders))
    except (NotImplementedError, RuntimeError):
        pass
    listeners = Listeners(config, engine)
    # The service side first: the configuration as started is read before any client can
    # connect (SIGHUP compares against it), and the metrics listener is up by READY=1.
    service = Service(config, engine, storage, listeners)
    try:
        await service.start(config_path, reloaders)
    except OSError as exc:
        log.error("cannot listen on %s:%d for metrics: %s", config.metrics_bind, config.metrics_port, exc)
        await service.close()
        await engine.shutdown()
        return 1
    try:
        await listeners.start()
    except ListenerError as exc:
        log.error("%s", exc)
        await service.close()
        await storage.close()
        access.close()
        return 1
    for listener in listeners.listeners:
        engine.auth.log_listener_policy(listener.info)  # AUTH: who may connect there, what to configure
    reloaders.append(listeners.reload)
    engine.sys_topics.sources.append(listeners.sys_values)
    service.ready(", ".join(listeners.addresses))

    async def ticker() -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                engine.tick(time.time())
            except Exception:
                log.exception("housekeeping failed")

    tick_task = asyncio.ensure_future(ticker())
    bridges = [Bridge(engine, bridge_config) for bridge_config in config.bridges]
    warn_about_orphans(engine, bridges)
    for bridge in bridges:
        await bridge.start()
    await stop.wait()
    log.info("shutting down")
    for bridge in bridges:
        await bridge.stop()
    service.begin_shutdown()
    tick_task.cancel()
    listeners.close()
    try:
        await engine.shutdown()
    except Exception as exc:
        if engine.failure is None:
            engine.failure = exc
            log.critical("final commit failed: %s", exc)
    await listeners.wait_closed()
    await service.close()
    engine.auth.close()
    if engine.failure is not None:
        log.error("stopped after a storage failure: %s", engine.failure)
        return 1
    log.info("stopped")
    return 0


def run(config: Config, config_path: str | None = None) -> int:
    """Blocking entry point used by ``python -m broker``; uses uvloop when installed."""
    try:
        # uvloop is optional (the "fast" extra): where it is missing mypy reports the import,
        # where it is installed the ignore is unused; both are expected.
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return asyncio.run(serve(config, config_path=config_path))
    return uvloop.run(serve(config, config_path=config_path))
