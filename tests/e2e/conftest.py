"""Fixtures of the end-to-end suite: a broker to talk to, and clients to talk with.

Every test takes ``target`` (one broker shared by the whole run, default
configuration) or ``target_factory`` (a dedicated broker with given limits, or
one the test restarts). Which broker: ``E2E_TARGET=ours`` (default) or
``E2E_TARGET=mosquitto`` (the reference the suite is validated against).

Tests sharing a broker stay apart by unique client ids and topics (``uid``).
Tests where mosquitto legitimately differs from what our broker must do carry
``@pytest.mark.ours_only("why")`` and are skipped against mosquitto.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .mqttraw import RawClient
from .pahoclient import PahoClient
from .targets import TARGET_KIND, Target


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ours_only(reason): what our broker must do but mosquitto (the reference) does differently;"
        " skipped when E2E_TARGET=mosquitto",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TARGET_KIND != "mosquitto":
        return
    for item in items:
        marker = item.get_closest_marker("ours_only")
        if marker is not None:
            why = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"mosquitto differs: {why}"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is not None and report.failed


def _show_log(target: Target, lines: int = 60) -> None:
    tail = "\n".join(target.log().splitlines()[-lines:])
    print(f"\n----- last {lines} log lines of {target!r} -----\n{tail}")


@pytest.fixture(scope="session")
def shared_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    target = Target(TARGET_KIND, tmp_path_factory.mktemp(f"{TARGET_KIND}-shared"))
    yield target
    target.stop()


@pytest.fixture
def target(shared_target: Target, request: pytest.FixtureRequest) -> Iterator[Target]:
    """The broker shared by the run; a test that kills it fails loudly."""
    assert shared_target.alive(), f"the shared broker is dead:\n{shared_target.log()[-3000:]}"
    yield shared_target
    if _failed(request):
        _show_log(shared_target)
    assert shared_target.alive(), f"the broker died during the test:\n{shared_target.log()[-3000:]}"


@pytest.fixture
def target_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Target]]:
    """``target_factory(max_packet_size=1000, ...)``: a dedicated broker with these [limits]."""
    started: list[Target] = []

    def start(**limits: int) -> Target:
        target = Target(TARGET_KIND, tmp_path / f"broker{len(started)}", limits)
        started.append(target)
        return target

    yield start
    for target in started:
        if _failed(request):
            _show_log(target)
        target.stop()


@pytest.fixture
def uid(request: pytest.FixtureRequest) -> str:
    """A short unique name for client ids and topic prefixes of one test."""
    name = request.node.name.split("[")[0].removeprefix("test_")[:24]
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=[4, 5], ids=["v311", "v5"])
def version(request: pytest.FixtureRequest) -> int:
    """Runs a test once with MQTT 3.1.1 (4) and once with MQTT 5 (5)."""
    return request.param


@pytest.fixture
def paho(target: Target) -> Iterator[Callable[..., PahoClient]]:
    """``paho(client_id, version=5, clean=True, target=None)``: a paho client, closed at teardown."""
    clients: list[PahoClient] = []

    def make(client_id: str = "", version: int = 5, clean: bool = True,
             target: Target | None = None, manual_ack: bool = False) -> PahoClient:
        client = PahoClient(target or default, client_id, version, clean, manual_ack)
        clients.append(client)
        return client

    default = target
    yield make
    for client in clients:
        client.close()


@pytest.fixture
def raw(target: Target) -> Iterator[Callable[..., RawClient]]:
    """``raw(version=4, target=None)``: a byte-level client socket, closed at teardown."""
    clients: list[RawClient] = []

    def make(version: int = 4, target: Target | None = None, timeout: float = 5.0) -> RawClient:
        t = target or default
        client = RawClient(t.host, t.port, version, timeout)
        clients.append(client)
        return client

    default = target
    yield make
    for client in clients:
        client.close()
