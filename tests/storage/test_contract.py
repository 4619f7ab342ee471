"""The storage contract (contract.py) run on the built-in backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.storage.memory import MemoryStorage
from broker.storage.sqlite import SqliteStorage

from .contract import StorageContract, StoreFactory


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def factory(self) -> StoreFactory:
        return StoreFactory(MemoryStorage, persistent=False)


class TestSqliteStorage(StorageContract):
    @pytest.fixture
    def factory(self, tmp_path: Path) -> StoreFactory:
        return StoreFactory(lambda: SqliteStorage(tmp_path / "broker.db"), persistent=True)
