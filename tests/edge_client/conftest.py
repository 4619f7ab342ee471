"""Fixtures for the edge_client tests: the interpreter a program runs on, and the broker.

`runtime` runs each program under real MicroPython (Unix port, library compiled
with mpy-cross, 64 KB heap) and under CPython. `edge_broker` is a real mosquitto
or our own broker (`python -m broker`); set EDGE_BROKER=mosquitto or =ours to run
against one only. "ours" is skipped only while `python -m broker` cannot be imported.
Both brokers keep the same port across restart(), as a device would expect.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokerprocess import free_port
from edge_harness import LIBRARY, EdgeBroker, Runtime, compile_tree

BROKERS = ["mosquitto", "ours"]
RUNTIMES = ["micropython", "cpython"]


@pytest.fixture(scope="session")
def mpy_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library compiled to .mpy, as it would be copied to a board."""
    dest = tmp_path_factory.mktemp("mpy")
    compile_tree(LIBRARY, dest)
    return dest


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest, mpy_lib: Path, tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(request.param, mpy_lib, tmp_path)
    yield rt
    rt.cleanup()


def _ours_importable() -> bool:
    try:
        return importlib.util.find_spec("broker.__main__") is not None
    except ImportError:
        return False


@pytest.fixture(params=BROKERS)
def edge_broker(
    request: pytest.FixtureRequest,
    mosquitto_factory: Any,  # from the suite's root conftest
    broker_factory: Any,
) -> EdgeBroker:
    kind = request.param
    only = os.environ.get("EDGE_BROKER")
    if only and only != kind:
        pytest.skip(f"EDGE_BROKER={only}")
    if kind == "mosquitto":
        return EdgeBroker(kind, mosquitto_factory(persistence=True))
    if not _ours_importable() and only != "ours":
        pytest.skip("our broker is not there yet: `python -m broker` cannot be imported")
    # --port after the factory's "--port 0": a fixed port survives restart(); the
    # factory still waits for and parses the "listening on HOST:PORT" line.
    return EdgeBroker(kind, broker_factory("--port", str(free_port())))
