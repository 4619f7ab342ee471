"""Fixtures of the robustness suite: a canary next to every attack, and a process's memory."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench.canary import Canary  # noqa: E402


@pytest.fixture
def canary_factory() -> Iterator[Callable[..., Canary]]:
    """``canary_factory(port)`` starts a canary (QoS 1 every 100 ms); ``.stop()`` gives its result."""
    started: list[Canary] = []

    def factory(port: int, host: str = "127.0.0.1") -> Canary:
        canary = Canary(host, port)
        started.append(canary)
        return canary

    yield factory
    for canary in started:
        canary.kill()
