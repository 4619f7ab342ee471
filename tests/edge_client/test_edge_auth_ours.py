"""The edge client's user name and password against our broker's password file (made
with `python -m broker passwd`, as a site would), under MicroPython and CPython."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from edge_harness import REPO, Runtime


def make_password_file(path: Path, user: str, password: str) -> Path:
    res = subprocess.run(
        [sys.executable, "-m", "broker", "passwd", "-c", "-b", str(path), user, password],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return path


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_password_file(tmp_path_factory.mktemp("auth") / "passwd", "edge", "s3cret")


def auth_broker(broker_factory: Any, password_file: Path) -> Any:
    return broker_factory(
        "--memory", config=f'[auth]\npassword_file = "{password_file}"\nallow_anonymous = false\n'
    )


def test_user_and_password_are_accepted(runtime: Runtime, broker_factory: Any, password_file: Path) -> None:
    broker = auth_broker(broker_factory, password_file)
    cid = f"auth-{runtime.name}"
    prog = runtime.run("auth_echo.py", broker.host, broker.port, cid, "edge", "s3cret")
    assert prog.got() == [(f"edge/{cid}/echo", 1, 0, "with a password")], prog.output()


@pytest.mark.parametrize("user,password", [("edge", "wrong"), ("nobody", "s3cret")])
def test_a_wrong_password_or_user_is_refused_with_connack_4(
    runtime: Runtime, broker_factory: Any, password_file: Path, user: str, password: str
) -> None:
    broker = auth_broker(broker_factory, password_file)
    prog = runtime.run("auth_echo.py", broker.host, broker.port, f"bad-{runtime.name}", user, password)
    # MQTT 3.1.1, 3.2.2.3: 4 = bad user name or password
    assert prog.lines == ["REFUSED 4"], prog.output()
