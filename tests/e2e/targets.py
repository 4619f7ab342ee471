"""The brokers the end-to-end suite runs against: ours, or mosquitto as a reference.

``E2E_TARGET=ours`` (the default, what CI runs) starts ``python -m broker``;
``E2E_TARGET=mosquitto`` starts /usr/sbin/mosquitto, which is how the suite
itself was validated before our broker existed. Tests see one ``Target`` shape
either way. Limits are given once, as our TOML ``[limits]`` keys, and are
translated into a mosquitto.conf for the reference broker.

Both processes listen on an OS-assigned port on 127.0.0.1 and are stopped by
their own PID.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TARGET_KIND = os.environ.get("E2E_TARGET", "ours").strip().lower()
if TARGET_KIND not in ("ours", "mosquitto"):
    raise RuntimeError(f"E2E_TARGET must be 'ours' or 'mosquitto', not {TARGET_KIND!r}")

REPO_ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
LIMIT_KEYS = ("max_keepalive", "max_packet_size", "max_queued_messages", "max_inflight_messages")
START_TIMEOUT = 15.0
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def free_port() -> int:
    """An OS-assigned free port (only for mosquitto, whose config needs a number)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ours_config(limits: dict[str, int]) -> str:
    """Our broker's TOML configuration for the given limits."""
    lines = ["[limits]"] + [f"{key} = {value}" for key, value in limits.items()]
    return "\n".join(lines) + "\n"


def mosquitto_config(limits: dict[str, int], port: int, data_dir: Path) -> str:
    """A mosquitto.conf equivalent to ours: anonymous, persistent, same limits."""
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        f"user {getpass.getuser()}",  # as root, mosquitto would switch to user mosquitto
        "persistence true",
        f"persistence_location {data_dir}/",
        "autosave_interval 0",  # save on exit, like a SIGTERM stop of ours
        "log_dest stderr",
        "log_type all",
        "max_keepalive 65535",
    ]
    lines += [f"{key} {value}" for key, value in limits.items()]
    return "\n".join(lines) + "\n"


class Target:
    """A running broker process: where it listens, and how to stop and restart it."""

    def __init__(self, kind: str, workdir: Path, limits: dict[str, int] | None = None) -> None:
        unknown = set(limits or ()) - set(LIMIT_KEYS)
        if unknown:
            raise ValueError(f"unsupported limits {unknown}")
        self.kind = kind
        self.limits = dict(limits or {})
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "broker.log"
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._port_for_mosquitto = free_port() if kind == "mosquitto" else 0
        self.start()

    @property
    def is_ours(self) -> bool:
        return self.kind == "ours"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(mosquitto_config(self.limits, self._port_for_mosquitto, self.data_dir))
            return [MOSQUITTO, "-c", str(conf)]
        cmd = [sys.executable, "-m", "broker", "--port", "0", "--data-dir", str(self.data_dir)]
        if self.limits:
            conf = self.workdir / "broker.toml"
            conf.write_text(ours_config(self.limits))
            cmd += ["-c", str(conf)]
        return cmd

    def start(self) -> None:
        """Start the process and wait until it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        mark = self.log_path.stat().st_size
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.workdir, env=env,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} broker exited with {self.proc.returncode}:\n{self.log()}")
            if self._ready(mark):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.kind} broker did not start within {START_TIMEOUT}s:\n{self.log()}")

    def _ready(self, mark: int) -> bool:
        if self.kind == "mosquitto":
            try:
                socket.create_connection((self.host, self._port_for_mosquitto), timeout=0.2).close()
            except OSError:
                return False
            self.port = self._port_for_mosquitto
            return True
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            found = _LISTENING.search(f.read().decode(errors="replace"))
        if found:
            self.host, self.port = found.group(1), int(found.group(2))
        return bool(found)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` to our process and wait for it to exit; returns its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"{self.kind} broker ignored signal {sig} for {timeout}s")
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop gracefully (SIGTERM by default), then start again on the same data."""
        self.stop(sig)
        self.start()

    def __repr__(self) -> str:
        return f"<Target {self.kind} {self.host}:{self.port} pid={self.pid}>"
