from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import BACKENDS, Backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each contract test runs once per backend, on a fresh store."""
    return Backend(request.param, tmp_path)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Backend:
    return Backend("sqlite", tmp_path)
