"""Under systemd (stderr is the journal stream), log lines carry syslog priorities."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker.logsetup import setup_logging, stderr_is_journal, use_priority_prefix
from brokerprocess import REPO_ROOT, subprocess_env
from ops_helpers import wait_until


@pytest.fixture
def restore_logging():
    yield
    setup_logging(False)


def test_priority_prefixes_follow_syslog_levels(restore_logging) -> None:
    stream = io.StringIO()
    setup_logging(True, stream, priority_prefix=True)
    log = logging.getLogger("broker")
    log.debug("d")
    log.info("New client connected")
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert lines[:5] == [
        "<7>broker: d",
        "<6>broker: New client connected",
        "<4>broker: warning: w",
        "<3>broker: error: e",
        "<2>broker: critical: c",
    ]
    # Every line of a traceback keeps the error priority.
    assert lines[5] == "<3>broker: error: failed"
    assert len(lines) > 7 and all(line.startswith("<3>") for line in lines[5:])
    assert lines[-1] == "<3>ValueError: boom"


def test_auto_needs_journal_stream_to_name_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "out", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal(stream)
        assert use_priority_prefix("auto", stream)
        assert not use_priority_prefix("off", stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # another file: inherited
        assert not use_priority_prefix("auto", stream)
        assert use_priority_prefix("on", stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not use_priority_prefix("auto", stream)


def test_broker_under_journal_stream_logs_with_priorities(tmp_path: Path) -> None:
    log_path = tmp_path / "journal"
    with open(log_path, "w") as stderr:
        st = os.fstat(stderr.fileno())
        env = subprocess_env()
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "--port", "0", "--data-dir", str(tmp_path / "data")],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )
        try:
            wait_until(lambda: "listening on" in log_path.read_text(), what="listening line")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
    lines = log_path.read_text().splitlines()
    assert any(line.startswith("<6>broker: ") and "listening on 127.0.0.1:" in line for line in lines), lines
    assert all(line.startswith("<") for line in lines), lines


def test_broker_without_journal_keeps_timestamps(broker) -> None:
    line = broker.wait_for_log(r"^.*listening on .*$").group(0)
    assert not line.startswith("<")
    assert line[:4].isdigit() and " broker: " in line and " listening on " in line
