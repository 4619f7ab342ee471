"""mosquitto_pub / mosquitto_sub (Debian's mosquitto-clients) against the broker.

Every command runs with a timeout (``-W`` and a subprocess deadline) so nothing
hangs. mosquitto_sub runs with ``-d`` so we can see its SUBACK and only publish
once it is subscribed; message lines are printed with a ``MSG`` prefix and a
hex payload so they are told apart from debug lines and binary-safe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .pahoclient import PahoClient

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")), reason="mosquitto-clients not installed"
)

WAIT = 10  # seconds: -W for mosquitto_sub, and the deadline for every command
LINE_BUFFERED = ["stdbuf", "-oL"]  # coreutils
FIELDS = "MSG|%t|%q|%r|%x"


@dataclass
class Received:
    topic: str
    qos: int
    retain: bool
    payload: bytes
    extra: list[str]


class Sub:
    """A running mosquitto_sub: wait until subscribed, then collect its messages."""

    def __init__(self, target, topics: list[str], count: int, *args: str, extra_fields: str = "") -> None:
        # Line-buffered stdout: its debug lines (our SUBACK signal) are not flushed otherwise.
        cmd = [*LINE_BUFFERED, "mosquitto_sub", "-h", target.host, "-p", str(target.port), "-d", "-W", str(WAIT),
               "-C", str(count), "-F", FIELDS + extra_fields, *args]
        for topic in topics:
            cmd += ["-t", topic]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[bytes] = []
        self._subscribed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if b"SUBACK" in line:
                self._subscribed.set()

    def wait_subscribed(self) -> Sub:
        if not self._subscribed.wait(WAIT):
            self.proc.kill()
            raise AssertionError(f"mosquitto_sub never got its SUBACK: {self.lines} {self.proc.stderr.read()!r}")
        return self

    def messages(self) -> list[Received]:
        """Wait for mosquitto_sub to exit (after -C messages) and parse what it printed."""
        try:
            rc = self.proc.wait(WAIT + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(5)
        err = self.proc.stderr.read().decode(errors="replace")
        assert rc == 0, f"mosquitto_sub exited with {rc}: {err}\n{self.lines}"
        got = []
        for line in self.lines:
            if line.startswith(b"MSG|"):
                fields = line.rstrip(b"\n").decode().split("|")
                topic, qos, retain, payload = fields[1:5]
                got.append(Received(topic, int(qos), retain == "1", bytes.fromhex(payload), fields[5:]))
        return got

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def mosquitto_sub(target):
    started: list[Sub] = []

    def start(topics: list[str], count: int, *args: str, extra_fields: str = "") -> Sub:
        sub = Sub(target, topics, count, *args, extra_fields=extra_fields)
        started.append(sub)
        return sub

    yield start
    for sub in started:
        sub.kill()


def mosquitto_pub(target, topic: str, *args: str) -> None:
    cmd = ["mosquitto_pub", "-h", target.host, "-p", str(target.port), "-t", topic, *args]
    done = subprocess.run(cmd, capture_output=True, timeout=WAIT)
    assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr.decode(errors='replace')}"


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("protocol", ["mqttv311", "mqttv5"])
def test_pub_sub_at_each_qos(target, mosquitto_sub, uid, qos, protocol):
    sub = mosquitto_sub([f"{uid}/t"], 3, "-q", str(qos), "-V", protocol).wait_subscribed()
    for i in range(3):
        mosquitto_pub(target, f"{uid}/t", "-q", str(qos), "-V", protocol, "-m", f"hello {i}")
    got = sub.messages()
    assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
        (f"{uid}/t", f"hello {i}".encode(), qos, False) for i in range(3)
    ]


def test_granted_qos_downgrades_delivery(target, mosquitto_sub, uid):
    sub = mosquitto_sub([f"{uid}/t"], 1, "-q", "1").wait_subscribed()
    mosquitto_pub(target, f"{uid}/t", "-q", "2", "-m", "x")
    assert [m.qos for m in sub.messages()] == [1]


def test_retained_set_replace_clear(target, mosquitto_sub, uid):
    mosquitto_pub(target, f"{uid}/state", "-r", "-q", "1", "-m", "first")
    mosquitto_pub(target, f"{uid}/state", "-r", "-q", "1", "-m", "second")
    got = mosquitto_sub([f"{uid}/state"], 1, "-q", "1").messages()
    assert [(m.payload, m.retain) for m in got] == [(b"second", True)]
    mosquitto_pub(target, f"{uid}/state", "-r", "-q", "1", "-n")  # -n: empty payload clears it
    done = subprocess.run(
        ["mosquitto_sub", "-h", target.host, "-p", str(target.port), "-t", f"{uid}/state",
         "-W", "1", "-C", "1", "--retained-only"],
        capture_output=True, timeout=WAIT,
    )
    assert done.stdout == b"", f"a cleared retained message came back: {done.stdout!r}"


def test_wildcards(target, mosquitto_sub, uid):
    sub = mosquitto_sub([f"{uid}/+/temp", f"{uid}/alarm/#"], 3, "-q", "1").wait_subscribed()
    for topic in ("kitchen/temp", "kitchen/humidity", "alarm", "alarm/door/front", "a/b/temp"):
        mosquitto_pub(target, f"{uid}/{topic}", "-q", "1", "-m", topic)
    got = sorted(m.topic for m in sub.messages())
    assert got == sorted([f"{uid}/kitchen/temp", f"{uid}/alarm", f"{uid}/alarm/door/front"])


def test_large_binary_payload_from_file(target, mosquitto_sub, uid, tmp_path: Path):
    payload = os.urandom(1024 * 1024)
    source = tmp_path / "blob.bin"
    source.write_bytes(payload)
    sub = mosquitto_sub([f"{uid}/blob"], 1, "-q", "1").wait_subscribed()
    mosquitto_pub(target, f"{uid}/blob", "-q", "1", "-f", str(source))
    [msg] = sub.messages()
    assert len(msg.payload) == len(payload)
    assert msg.payload == payload


def test_large_binary_payload_to_paho(target, paho, uid, tmp_path: Path):
    payload = os.urandom(1024 * 1024)
    source = tmp_path / "blob.bin"
    source.write_bytes(payload)
    sub: PahoClient = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/blob", 2)
    mosquitto_pub(target, f"{uid}/blob", "-q", "2", "-V", "mqttv5", "-f", str(source))
    [msg] = sub.expect_messages(1)
    assert msg.payload == payload


def test_v5_user_properties(target, mosquitto_sub, uid):
    sub = mosquitto_sub([f"{uid}/props"], 1, "-V", "mqttv5", "-q", "1", extra_fields="|%P").wait_subscribed()
    mosquitto_pub(
        target, f"{uid}/props", "-V", "mqttv5", "-q", "1", "-m", "with properties",
        "-D", "publish", "user-property", "site", "berlin",
        "-D", "publish", "user-property", "rack", "7",
    )
    [msg] = sub.messages()
    assert msg.payload == b"with properties"
    printed = msg.extra[0]
    assert "site:berlin" in printed and "rack:7" in printed
    assert printed.index("site:berlin") < printed.index("rack:7")  # order preserved


def test_v5_properties_to_paho(target, paho, uid):
    sub: PahoClient = paho(f"{uid}-sub", 5)
    sub.connect()
    sub.subscribe(f"{uid}/props", 1)
    mosquitto_pub(
        target, f"{uid}/props", "-V", "mqttv5", "-q", "1", "-m", "{}",
        "-D", "publish", "user-property", "k", "v",
        "-D", "publish", "content-type", "application/json",
        "-D", "publish", "response-topic", f"{uid}/reply",
        "-D", "publish", "correlation-data", "abc",
        "-D", "publish", "payload-format-indicator", "1",
    )
    [msg] = sub.expect_messages(1)
    p = msg.properties
    assert p.UserProperty == [("k", "v")]
    assert (p.ContentType, p.ResponseTopic, p.CorrelationData, p.PayloadFormatIndicator) == (
        "application/json", f"{uid}/reply", b"abc", 1)


def test_persistent_mosquitto_sub_gets_queued_messages(target, uid):
    base = ["mosquitto_sub", "-h", target.host, "-p", str(target.port), "-t", f"{uid}/q", "-q", "1",
            "-c", "-i", f"{uid}-persistent"]
    subscribed = subprocess.run(base + ["-E"], capture_output=True, timeout=WAIT)  # subscribe, then exit
    assert subscribed.returncode == 0, subscribed.stderr
    for i in range(3):
        mosquitto_pub(target, f"{uid}/q", "-q", "1", "-m", f"queued {i}")
    started = time.monotonic()
    back = subprocess.run(base + ["-C", "3", "-W", str(WAIT)], capture_output=True, timeout=WAIT + 5)
    assert back.returncode == 0, back.stderr
    assert back.stdout.splitlines() == [b"queued 0", b"queued 1", b"queued 2"]
    assert time.monotonic() - started < WAIT


def test_stdin_lines_become_messages(target, mosquitto_sub, uid):
    sub = mosquitto_sub([f"{uid}/lines"], 3, "-q", "1").wait_subscribed()
    cmd = ["mosquitto_pub", "-h", target.host, "-p", str(target.port), "-t", f"{uid}/lines", "-q", "1", "-l"]
    done = subprocess.run(cmd, input=b"one\ntwo\nthree\n", capture_output=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert [m.payload for m in sub.messages()] == [b"one", b"two", b"three"]
