"""Choose and open the storage backend named by the configuration."""

from __future__ import annotations

import os

from broker.config import Config
from broker.storage.base import Storage
from broker.storage.memory import MemoryStorage
from broker.storage.sqlite import SqliteStorage

DB_FILE_NAME = "broker.db"


def create_storage(config: Config, *, sync: str | None = None) -> Storage:
    """The backend for ``config.backend``, not opened yet ("sqlite" creates data_dir)."""
    if config.backend == "memory":
        return MemoryStorage()
    if config.backend == "sqlite":
        os.makedirs(config.data_dir, exist_ok=True)
        return SqliteStorage(
            os.path.join(config.data_dir, DB_FILE_NAME),
            sync=sync or config.sync,
            min_free_space=config.min_free_space,
        )
    raise ValueError(f"unknown storage backend {config.backend!r} (expected 'sqlite' or 'memory')")


async def open_storage(config: Config, *, sync: str | None = None) -> Storage:
    """Create and open the backend; raises CorruptDatabase if the file is damaged."""
    storage = create_storage(config, sync=sync)
    await storage.open()
    return storage
