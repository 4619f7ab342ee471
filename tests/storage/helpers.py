"""Shared helpers of the storage suite: backends under test and running coroutines.

No pytest-asyncio: each test is an ``async def`` wrapped by ``run_async``,
which runs it with ``asyncio.run`` (a fresh event loop per test).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from broker.storage.base import Storage
from broker.storage.memory import MemoryStorage
from broker.storage.sqlite import SqliteStorage

BACKENDS = ["memory", "sqlite"]


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Make an ``async def`` test a plain pytest test (fixtures still injected)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


class Backend:
    """Builds stores of one kind; for SQLite every store uses the same file."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.db_path = directory / "broker.db"

    @property
    def persistent(self) -> bool:
        return self.name == "sqlite"

    def create(self, **kwargs: Any) -> Storage:
        if self.name == "memory":
            return MemoryStorage()
        return SqliteStorage(self.db_path, **kwargs)

    @asynccontextmanager
    async def opened(self, **kwargs: Any) -> AsyncIterator[Storage]:
        store = self.create(**kwargs)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    def __repr__(self) -> str:
        return self.name
