"""Real processes for tests: the broker (``python -m broker``) and mosquitto, by PID, output kept.

Used by the fixtures in ``conftest.py``; import from here (``from brokerprocess import
BrokerProcess``), not from ``conftest``: several test folders have a conftest.py and
``import conftest`` would pick any of them.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
LISTENING = re.compile(r"listening on (\S+):(\d+)")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO_ROOT))

# A port below the ephemeral range: tests import it from here.
from bench.brokers import free_port  # noqa: E402, F401


def subprocess_env() -> dict[str, str]:
    """The environment for child Pythons: this checkout first on the path, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


class OutputDrain:
    """Reads a process's output line by line in a thread, keeps it, and spots one pattern."""

    def __init__(self, pipe: IO[bytes], pattern: re.Pattern[str] | None = None) -> None:
        self._pipe = pipe
        self._pattern = pattern
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.match: re.Match[str] | None = None
        self.found_or_eof = threading.Event()  # the pattern was seen, or the pipe closed
        self.eof = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for raw in iter(self._pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                with self._lock:
                    self._lines.append(line)
                if self.match is None and self._pattern is not None:
                    match = self._pattern.search(line)
                    if match:
                        self.match = match
                        self.found_or_eof.set()
        finally:
            self.eof.set()
            self.found_or_eof.set()
            self._pipe.close()

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until some output line matches ``pattern``; fail with the output if none does."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for line in self._lines:
                    match = regex.search(line)
                    if match:
                        return match
            if self.eof.is_set() or time.monotonic() >= deadline:
                raise AssertionError(
                    f"no output line matched {regex.pattern!r} within {timeout}s\n"
                    f"--- output ---\n{self.text()}"
                )
            time.sleep(0.02)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class _ManagedProcess:
    """Start/stop/kill by PID with the output kept; the base of both fixtures' handles."""

    name = "process"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._drain: OutputDrain | None = None
        self._old_logs: list[str] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log(self, all_runs: bool = False) -> str:
        """Output of the current run (or of every run, oldest first, with ``all_runs``)."""
        current = self._drain.text() if self._drain is not None else ""
        return "".join(self._old_logs) + current if all_runs else current

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 5.0) -> re.Match[str]:
        """Wait for a line of the current run's output matching ``pattern``."""
        assert self._drain is not None, f"{self.name} was never started"
        return self._drain.wait_for(pattern, timeout)

    def _spawn(
        self,
        command: Sequence[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        ready: re.Pattern[str] | None = None,
    ) -> OutputDrain:
        if self._drain is not None:
            self._old_logs.append(self._drain.text())
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream, in order; logging goes to stderr anyway
            cwd=cwd,
            env=env,
        )
        self._drain = OutputDrain(self.proc.stdout, ready)  # type: ignore[arg-type]
        return self._drain

    def _startup_failed(self, why: str) -> None:
        """Kill what was started and fail the test with everything it printed."""
        assert self.proc is not None and self._drain is not None
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self._drain.join(2.0)
        pytest.fail(
            f"{self.name} did not start ({why}; exit code {code})\n"
            f"command: {' '.join(map(str, self.proc.args))}\n"  # type: ignore[arg-type]
            f"--- {self.name} output ---\n{self._drain.text()}",
            pytrace=False,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code (negative: killed by a signal).

        A process still running after ``timeout`` is killed and the test fails:
        a clean stop that hangs is a bug.
        """
        assert self.proc is not None, f"{self.name} was never started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                assert self._drain is not None
                self._drain.join(2.0)
                raise AssertionError(
                    f"{self.name} (pid {self.proc.pid}) still running {timeout}s after "
                    f"signal {signal.Signals(sig).name}; killed\n--- output ---\n{self._drain.text()}"
                ) from None
        assert self._drain is not None
        self._drain.join(2.0)
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL, as a power cut would; returns the exit code (-9)."""
        assert self.proc is not None, f"{self.name} was never started"
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        assert self._drain is not None
        self._drain.join(2.0)
        return code

    def cleanup(self) -> None:
        """Teardown: make sure the process is gone (SIGTERM, then SIGKILL), never raising."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._drain is not None:
            self._drain.join(2.0)


class BrokerProcess(_ManagedProcess):
    """``python -m broker`` on 127.0.0.1 with an OS-assigned port and its own data directory."""

    name = "broker"

    def __init__(self, data_dir: Path, args: Sequence[str], cwd: Path) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.args = list(args)
        self.cwd = cwd
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def command(self) -> list[str]:
        # Extra args come last, so a test may still override --port or --data-dir.
        return [
            sys.executable, "-m", "broker",
            "--port", "0",
            "--data-dir", str(self.data_dir),
            *self.args,
        ]

    def start(self, timeout: float = STARTUP_TIMEOUT) -> BrokerProcess:
        """Start and wait for the ``listening on HOST:PORT`` line."""
        assert not self.running, "broker already running"
        drain = self._spawn(self.command, self.cwd, subprocess_env(), LISTENING)
        if not drain.found_or_eof.wait(timeout):
            self._startup_failed(f"no 'listening on HOST:PORT' line within {timeout}s")
        if drain.match is None:
            self._startup_failed("it exited before listening")
        assert drain.match is not None
        host = drain.match.group(1).strip("[]")
        # A wildcard bind is reached over loopback.
        self.host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        self.port = int(drain.match.group(2))
        return self

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> BrokerProcess:
        """Stop (SIGTERM) if running, then start again on the same data directory and args.

        The new process listens on a new port: read ``.port`` again.
        """
        if self.running:
            self.stop()
        return self.start(timeout)

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<BrokerProcess pid={pid} {self.host}:{self.port} data_dir={self.data_dir}>"


class MosquittoProcess(_ManagedProcess):
    """A real mosquitto on 127.0.0.1, as a reference implementation or a peer."""

    name = "mosquitto"

    def __init__(self, directory: Path, persistence: bool, extra_config: str) -> None:
        super().__init__()
        self.directory = directory
        self.persistence = persistence
        self.extra_config = extra_config
        self.host = "127.0.0.1"
        self.port = free_port()
        self.config_path = directory / "mosquitto.conf"

    def _write_config(self) -> None:
        user = pwd.getpwuid(os.getuid()).pw_name  # as root, mosquitto would switch to "mosquitto"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"user {user}",
            "log_dest stderr",
            "log_type all",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
        ]
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = STARTUP_TIMEOUT) -> MosquittoProcess:
        """Start on ``.port`` and wait until it accepts connections."""
        assert not self.running, "mosquitto already running"
        if not os.path.exists(MOSQUITTO):
            pytest.fail(f"{MOSQUITTO} not found: install Debian's mosquitto (.ci/run does)")
        self._write_config()
        self._spawn([MOSQUITTO, "-c", str(self.config_path)], self.directory)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                self._startup_failed("it exited")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() >= deadline:
                    self._startup_failed(f"port {self.port} not accepting connections within {timeout}s")
                time.sleep(0.05)

    def restart(self, timeout: float = STARTUP_TIMEOUT) -> MosquittoProcess:
        """Stop (SIGTERM) if running, then start again with the same port and files."""
        if self.running:
            self.stop()
        return self.start(timeout)


BrokerFactory = Callable[..., BrokerProcess]
MosquittoFactory = Callable[..., MosquittoProcess]
