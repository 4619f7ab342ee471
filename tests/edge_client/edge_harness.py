"""Helpers for the edge_client tests: run a test program under MicroPython or CPython,
and a paho-mqtt peer on the other side of the broker.

Programs live in programs/ and are written for both interpreters. They print one
event per line ("READY", "GOT topic qos retain payload", ...); the test reads the
lines while the program runs.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROGRAMS = HERE / "programs"
LIBRARY = REPO / "edge_client"
VENDOR = HERE / "vendor"
MICROPYTHON = shutil.which("micropython") or "micropython"
MPY_CROSS = shutil.which("mpy-cross") or "mpy-cross"
HEAP = "64k"  # the examples and the tests run in the heap of a small board


def compile_tree(src: Path, dest: Path) -> list[Path]:
    """mpy-cross every .py under src into dest (same layout); returns the .mpy files."""
    out = []
    for py in sorted(src.rglob("*.py")):
        target = dest / py.relative_to(src.parent).with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(
            [MPY_CROSS, "-o", str(target), str(py)], capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            raise AssertionError(f"mpy-cross failed on {py}:\n{res.stdout}{res.stderr}")
        out.append(target)
    return out


class Program:
    """A running test program; its stdout lines arrive in a queue and are kept."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True
        )
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._q.put(line)
        self._q.put(None)

    def expect(self, prefix: str, timeout: float = 15.0) -> str:
        """Wait for the next line starting with prefix (earlier lines are kept, skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line {prefix!r} within {timeout}s\n{self.output()}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._q.put(None)
                raise AssertionError(f"program ended before {prefix!r}\n{self.output()}")
            if line.startswith(prefix):
                return line

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"program still running after {timeout}s\n{self.output()}") from None
        self._t.join(5)
        return code

    def finish(self, timeout: float = 30.0) -> list[str]:
        """Wait for a clean exit and return every line."""
        code = self.wait(timeout)
        assert code == 0, f"exit code {code}\n{self.output()}"
        return self.lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._t.join(5)

    def output(self) -> str:
        return f"$ {' '.join(self.argv)}\n" + "\n".join(self.lines)

    def got(self) -> list[tuple[str, int, int, str]]:
        """The GOT lines: (topic, qos, retain, payload)."""
        out = []
        for line in self.lines:
            if line.startswith("GOT "):
                _, topic, qos, retain, payload = line.split(" ", 4)
                out.append((topic, int(qos), int(retain), payload))
        return out


class Runtime:
    """How to run a program: 'micropython' (Unix port, library as .mpy) or 'cpython'."""

    def __init__(self, name: str, mpy_lib: Path, workdir: Path) -> None:
        self.name = name
        self.mpy_lib = mpy_lib
        self.workdir = workdir
        self.started: list[Program] = []

    def argv(self, script: Path) -> list[str]:
        if self.name == "micropython":
            return [MICROPYTHON, "-X", f"heapsize={HEAP}", str(script)]
        return [sys.executable, str(script)]

    def env(self, extra_paths: tuple[Path, ...] = ()) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(p) for p in extra_paths]
        if self.name == "micropython":
            env["MICROPYPATH"] = os.pathsep.join([".frozen", str(self.mpy_lib), str(PROGRAMS), *paths])
        else:
            env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(PROGRAMS), *paths])
            env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(
        self,
        script: str | Path,
        *args: object,
        extra_paths: tuple[Path, ...] = (),
        env: dict[str, str] | None = None,
    ) -> Program:
        path = script if isinstance(script, Path) else PROGRAMS / script
        full_env = self.env(extra_paths)
        full_env.update(env or {})
        prog = Program(self.argv(path) + [str(a) for a in args], full_env, self.workdir)
        self.started.append(prog)
        return prog

    def run(
        self,
        script: str | Path,
        *args: object,
        timeout: float = 30.0,
        extra_paths: tuple[Path, ...] = (),
        env: dict[str, str] | None = None,
    ) -> Program:
        prog = self.start(script, *args, extra_paths=extra_paths, env=env)
        prog.finish(timeout)
        return prog

    def cleanup(self) -> None:
        for prog in self.started:
            prog.kill()


class Peer:
    """A paho-mqtt client on the other side of the broker, reconnecting by itself."""

    def __init__(self, host: str, port: int, client_id: str, clean_session: bool = True) -> None:
        self.messages: list[tuple[str, int, int, bytes]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subacks: dict[int, threading.Event] = {}
        c = self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        c.reconnect_delay_set(0.1, 1)
        c.on_connect = lambda *a: self._connected.set()
        c.on_disconnect = lambda *a: self._connected.clear()
        c.on_message = self._on_message
        c.on_subscribe = lambda cl, ud, mid, *a: self._subacks.setdefault(mid, threading.Event()).set()
        c.connect(host, port, keepalive=10)
        c.loop_start()
        assert self._connected.wait(10), "paho peer could not connect"

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.messages.append((msg.topic, msg.qos, int(msg.retain), msg.payload))

    def subscribe(self, topic: str, qos: int) -> None:
        _, mid = self.client.subscribe(topic, qos)
        ev = self._subacks.setdefault(mid, threading.Event())
        assert ev.wait(10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        if qos:
            info.wait_for_publish(15)

    def wait_connected(self, timeout: float = 15.0) -> None:
        assert self._connected.wait(timeout), "paho peer did not reconnect"

    def wait_disconnected(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self._connected.is_set():
            assert time.monotonic() < deadline, "paho peer did not notice the broker going away"
            time.sleep(0.02)

    def wait_for(self, n: int, timeout: float = 15.0) -> list[tuple[str, int, int, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.02)
        with self._lock:
            raise AssertionError(f"peer got {len(self.messages)} of {n} messages: {self.messages}")

    def settle(self, seconds: float = 0.5) -> list[tuple[str, int, int, bytes]]:
        """Messages after a quiet moment: lets late duplicates show up."""
        time.sleep(seconds)
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class EdgeBroker:
    """One broker under test with a fixed host:port across restarts."""

    def __init__(self, kind: str, process: Any) -> None:
        self.kind = kind
        self.process = process

    @property
    def host(self) -> str:
        return str(self.process.host)

    @property
    def port(self) -> int:
        return int(self.process.port)

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        self.process.start()

    def restart(self) -> None:
        self.process.restart()

