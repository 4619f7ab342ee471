"""Shared helpers of the storage suite: SQLite files under test and running coroutines.

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

from broker.storage.sqlite import SqliteStorage


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Make an ``async def`` test a plain pytest test (fixtures still injected)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


class SqliteFiles:
    """SQLite stores on one file, for the SQLite-specific tests (test_sqlite.py)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.db_path = directory / "broker.db"

    def create(self, **kwargs: Any) -> SqliteStorage:
        return SqliteStorage(self.db_path, **kwargs)

    @asynccontextmanager
    async def opened(self, **kwargs: Any) -> AsyncIterator[SqliteStorage]:
        store = self.create(**kwargs)
        await store.open()
        try:
            yield store
        finally:
            await store.close()
