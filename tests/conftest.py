"""Shared fixtures: the real broker as a subprocess, and a real mosquitto as a peer or reference.

Every process is started on 127.0.0.1 with a port the OS chose, and stopped by
its PID at teardown. Its output is drained by a thread all the time (a full
pipe would block its logging and so the process itself) and is shown in the
report of a failing test. The process classes live in ``brokerprocess.py``.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from brokerprocess import (
    BrokerFactory,
    BrokerProcess,
    MosquittoFactory,
    MosquittoProcess,
    _ManagedProcess,
)

# Timing deadlines make property tests flaky on a loaded 2-core machine.
settings.register_profile("edgemq", deadline=None, print_blob=True)
settings.load_profile("edgemq")


PROCESSES = pytest.StashKey[list[_ManagedProcess]]()

# Fixtures whose tests measure latency, so run alone like ``serial`` tests: the canary
# (tests/robust) fails on a PUBACK slower than 1 s, which other tests on the same cores cause.
SERIAL_FIXTURES = frozenset({"canary_factory"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "serial: the test measures time or throughput, so it runs last and, under pytest-xdist (-n), alone:"
        " no test of another worker runs meanwhile (tests using canary_factory are serial too)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Serial tests (marked, or using a SERIAL_FIXTURES fixture) are marked and go last.

    Last, so that under xdist the other workers have run out of ordinary tests by the
    time a serial test waits for them: no worker idles while one runs alone mid-run.
    """
    for item in items:
        if SERIAL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.serial)
    items.sort(key=lambda item: item.get_closest_marker("serial") is not None)  # stable


@pytest.fixture(autouse=True)
def _serial_tests_run_alone(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under pytest-xdist, a ``serial`` test runs while no other test does.

    One lock file shared by the workers of one run (flock, released by the kernel if
    a worker dies): ordinary tests hold it shared, a serial test exclusively, so it
    waits until the tests running elsewhere are done and keeps new ones out. Serial
    tests come last (above), so waiting costs nothing while ordinary tests remain.
    Without xdist nothing runs in parallel and nothing is locked.
    """
    if not hasattr(request.config, "workerinput"):  # not an xdist worker (a child pytest inherits its environment)
        yield
        return
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/, above each worker's popen-gwK/
    alone = request.node.get_closest_marker("serial") is not None
    with open(shared / "serial.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _register(request: pytest.FixtureRequest, process: _ManagedProcess) -> None:
    request.node.stash.setdefault(PROCESSES, []).append(process)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test's report shows the output of every process its fixtures started."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for process in item.stash.get(PROCESSES, []):
            if process.proc is not None:
                report.sections.append(
                    (f"{process.name} pid {process.proc.pid} output", process.log(all_runs=True))
                )
    return report


EXIT_STATUS = pytest.StashKey[int]()
# How long exit waits for leftover threads to end; tests/test_fixtures.py shortens it.
LEFTOVER_THREAD_GRACE = float(os.environ.get("EDGEMQ_LEFTOVER_THREAD_GRACE", "5.0"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Never hang at exit because a test leaked a non-daemon thread (e.g. an unclosed SQLite store).

    Python waits for such threads forever when it shuts down, which would
    turn one leaking test into a CI run stuck until its time limit. The
    threads are named, and the run fails.
    """
    main = threading.main_thread()
    leftovers = [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
    deadline = time.monotonic() + LEFTOVER_THREAD_GRACE
    for thread in leftovers:
        thread.join(max(0.0, deadline - time.monotonic()))
    leftovers = [t for t in leftovers if t.is_alive()]
    if not leftovers:
        return
    names = ", ".join(f"{t.name} ({type(t).__module__}.{type(t).__qualname__})" for t in leftovers)
    sys.stdout.flush()
    sys.stderr.write(
        f"\nerror: tests left {len(leftovers)} non-daemon thread(s) running: {names}\n"
        "Python would wait for them forever at exit; exiting now. Close what the test opened.\n"
    )
    sys.stderr.flush()
    os._exit(config.stash.get(EXIT_STATUS, 1) or 1)


@pytest.fixture
def broker_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[BrokerFactory]:
    """Start real brokers: ``broker_factory("--memory", data_dir=None, config=None, start=True)``.

    ``config`` is TOML text written to a file and passed with ``-c`` (the
    command line still sets ``--port 0`` and ``--data-dir``). Each broker gets
    its own data directory unless ``data_dir`` is given (to share one).
    """
    started: list[BrokerProcess] = []

    def factory(
        *args: str,
        data_dir: Path | str | None = None,
        config: str | None = None,
        start: bool = True,
    ) -> BrokerProcess:
        workdir = tmp_path_factory.mktemp("broker")
        data = Path(data_dir) if data_dir is not None else workdir / "data"
        extra = list(args)
        if config is not None:
            config_path = workdir / "broker.toml"
            config_path.write_text(config)
            extra = ["-c", str(config_path), *extra]
        process = BrokerProcess(data, extra, cwd=workdir)
        started.append(process)
        _register(request, process)
        if start:
            process.start()
        return process

    yield factory
    for process in started:
        process.cleanup()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> BrokerProcess:
    """One running broker with defaults (SQLite in a temporary data directory)."""
    return broker_factory()


@pytest.fixture
def mosquitto_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[MosquittoFactory]:
    """Start real mosquittos: ``mosquitto_factory(persistence=False, config="", start=True)``.

    ``config`` holds extra mosquitto.conf lines (e.g. "max_inflight_messages 5").
    """
    started: list[MosquittoProcess] = []

    def factory(persistence: bool = False, config: str = "", start: bool = True) -> MosquittoProcess:
        process = MosquittoProcess(tmp_path_factory.mktemp("mosquitto"), persistence, config)
        started.append(process)
        _register(request, process)
        if start:
            process.start()
        return process

    yield factory
    for process in started:
        process.cleanup()
