"""Building and driving the C load generator (bench/loadgen.c).

The binary is compiled on demand into bench/build/ (ignored by git) and
rebuilt whenever the source or the compiler flags change.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.brokers import _child_limits

BENCH_DIR = Path(__file__).resolve().parent
SOURCE = BENCH_DIR / "loadgen.c"
BUILD_DIR = BENCH_DIR / "build"
BINARY = BUILD_DIR / "loadgen"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]
LIBS = ["-lm", "-lssl", "-lcrypto"]  # OpenSSL for --tls (Debian: libssl-dev)


class LoadgenError(RuntimeError):
    """The load generator failed (connection refused, a broker refused a subscription, ...)."""


def build(force: bool = False) -> Path:
    """Compile the load generator if needed; returns the binary's path."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise LoadgenError("no C compiler (gcc) found: apt-get install gcc")
    command = [compiler, *CFLAGS, "-o", str(BINARY), str(SOURCE), *LIBS]
    stamp = BUILD_DIR / "loadgen.cmd"
    wanted = " ".join(command)
    up_to_date = (
        BINARY.exists()
        and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime
        and stamp.exists()
        and stamp.read_text() == wanted
    )
    if up_to_date and not force:
        return BINARY
    BUILD_DIR.mkdir(exist_ok=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise LoadgenError(f"compiling {SOURCE.name} failed:\n{result.stderr}")
    stamp.write_text(wanted)
    return BINARY


def _args(options: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def run(port: int, options: dict[str, Any], timeout: float, nofile: int) -> dict[str, Any]:
    """One measurement (``loadgen run``); returns its JSON result."""
    command = [str(BINARY), "run", "--port", str(port), *_args(options)]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, preexec_fn=_child_limits(nofile)
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadgenError(f"load generator still running after {timeout:.0f}s (killed)") from exc
    if result.returncode != 0:
        raise LoadgenError((result.stderr.strip() or f"exit code {result.returncode}").splitlines()[-1])
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise LoadgenError("load generator printed no result")
    data: dict[str, Any] = json.loads(lines[-1])
    data["stderr"] = result.stderr.strip()
    return data


class IdleConnections:
    """``loadgen idle``: open N MQTT connections, hold them, then disconnect them all."""

    def __init__(
        self, port: int, connections: int, tag: str, nofile: int, concurrency: int = 100, tls: str | None = None
    ) -> None:
        self.command = [
            str(BINARY), "idle", "--port", str(port), "--connections", str(connections),
            "--concurrency", str(concurrency), "--tag", tag,
        ]
        if tls is not None:
            self.command += ["--tls", tls]  # the CA file: connections over TLS
        self.nofile = nofile
        self.proc: subprocess.Popen[str] | None = None

    def open(self, timeout: float) -> tuple[int, int, float]:
        """Connect all; returns (established, failed, seconds taken)."""
        self.spawn(timeout)
        return self.wait_open()

    def spawn(self, timeout: float) -> None:
        """Start connecting (several instances, one per port, connect at the same time)."""
        self.proc = subprocess.Popen(
            [*self.command, "--connect-timeout", str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_child_limits(self.nofile),
        )

    def wait_open(self) -> tuple[int, int, float]:
        """Wait until spawn()'s connections are up; returns (established, failed, seconds taken)."""
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.proc.kill()
            _, err = self.proc.communicate()
            raise LoadgenError(f"idle connections failed: {err.strip() or line.strip() or 'no output'}")
        _, established, failed, seconds = line.split()
        return int(established), int(failed), float(seconds)

    def close(self, timeout: float = 60.0) -> dict[str, Any]:
        """Disconnect everything; returns the final JSON (with ``dropped``: closed by the broker meanwhile)."""
        assert self.proc is not None
        try:
            out, err = self.proc.communicate("close\n", timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.communicate()
            raise LoadgenError("idle load generator did not exit") from exc
        lines = out.strip().splitlines()
        if self.proc.returncode != 0 or not lines:
            raise LoadgenError(err.strip() or "idle load generator failed")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
