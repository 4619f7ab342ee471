from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import SqliteFiles


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> SqliteFiles:
    return SqliteFiles(tmp_path)
