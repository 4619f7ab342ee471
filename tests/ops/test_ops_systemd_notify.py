"""The sd_notify protocol against real datagram sockets: READY=1 once listening, WATCHDOG=1
pings at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM; path and abstract ('@') sockets."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from broker.ops.systemd import Notifier, socket_address, watchdog_seconds


def _receiver(tmp_path: Path, abstract: bool) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"edgemq-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        env_value = "@" + name
    else:
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        env_value = path
    sock.settimeout(10)
    return sock, env_value


def _messages(sock: socket.socket, until: str, timeout: float = 10.0) -> list[dict[str, str]]:
    """Datagrams received (each parsed into KEY=value pairs) up to one that has ``until``."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(4096)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        got.append(fields)
        key, _, wanted = until.partition("=")
        if fields.get(key) == wanted:
            return got
    raise AssertionError(f"no {until} within {timeout}s; got {got}")


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_sends_one_datagram_per_call(tmp_path: Path, abstract: bool) -> None:
    receiver, env_value = _receiver(tmp_path, abstract)
    with receiver:
        notifier = Notifier({"NOTIFY_SOCKET": env_value})
        assert notifier.enabled
        assert notifier.notify("READY=1", "STATUS=listening on 127.0.0.1:1883")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=listening on 127.0.0.1:1883"
        assert notifier.notify("WATCHDOG=1")
        assert receiver.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False


def test_abstract_names_start_with_a_nul_byte() -> None:
    assert socket_address("@edgemq/notify") == b"\0edgemq/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ],
)
def test_watchdog_timeout_from_the_environment(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_seconds(env) == expected


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_broker_reports_ready_pings_the_watchdog_and_reports_stopping(
    broker_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, abstract: bool
) -> None:
    receiver, env_value = _receiver(tmp_path, abstract)
    with receiver:
        monkeypatch.setenv("NOTIFY_SOCKET", env_value)
        monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        broker = broker_factory()
        ready = _messages(receiver, "READY=1")[-1]
        assert ready["STATUS"] == f"listening on 127.0.0.1:{broker.port}"
        assert ready["MAINPID"] == str(broker.pid)
        # The broker was already listening when READY=1 arrived.
        socket.create_connection(("127.0.0.1", broker.port), timeout=5).close()
        pings = 0
        started = time.monotonic()
        while pings < 3:
            if _messages(receiver, "WATCHDOG=1", timeout=5)[-1].get("WATCHDOG") == "1":
                pings += 1
        assert time.monotonic() - started < 5
        assert broker.stop() == 0
        assert "STOPPING" in _messages(receiver, "STOPPING=1")[-1]


def test_watchdog_pings_only_while_healthy(tmp_path: Path) -> None:
    import asyncio

    from broker.ops.systemd import watchdog

    receiver, env_value = _receiver(tmp_path, abstract=False)
    receiver.setblocking(False)
    health = {"ok": False}

    async def run_for(seconds: float) -> None:
        notifier = Notifier({"NOTIFY_SOCKET": env_value, "WATCHDOG_USEC": "100000"})
        task = asyncio.ensure_future(watchdog(notifier, lambda: health["ok"]))
        await asyncio.sleep(seconds)
        task.cancel()
        notifier.close()

    def drain() -> list[bytes]:
        got = []
        while True:
            try:
                got.append(receiver.recv(4096))
            except BlockingIOError:
                return got

    with receiver:
        asyncio.run(run_for(0.3))
        assert drain() == []  # unhealthy: systemd will kill it
        health["ok"] = True
        asyncio.run(run_for(0.3))
        pings = drain()
        assert len(pings) >= 3 and set(pings) == {b"WATCHDOG=1"}
