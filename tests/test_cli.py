"""``python -m broker``: options, the order defaults < file < command line, errors, and logging."""

from __future__ import annotations

import io
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broker import __version__
from broker.__main__ import build_parser, config_from_args
from broker.config import Config
from broker.logsetup import setup_logging

from brokerprocess import REPO_ROOT, BrokerFactory, subprocess_env

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d broker: ")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``python -m broker ARGS`` for options that exit by themselves (no server starts)."""
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        cwd=cwd or REPO_ROOT,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse(*argv: str) -> Config:
    return config_from_args(build_parser().parse_args(list(argv)))


# ---- options, in-process ----------------------------------------------------------------


def test_no_arguments_means_the_defaults() -> None:
    config = parse()
    assert config == Config()
    assert (config.bind, config.port, config.data_dir, config.backend) == (
        "127.0.0.1", 1883, "./data", "sqlite",
    )


def test_every_option() -> None:
    config = parse("--bind", "0.0.0.0", "-p", "1884", "--data-dir", "/tmp/x", "--memory", "-v")
    assert (config.bind, config.port, config.data_dir, config.backend, config.verbose) == (
        "0.0.0.0", 1884, "/tmp/x", "memory", True,
    )
    assert parse("--port", "0").port == 0


def test_command_line_overrides_the_file_and_the_file_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text(
        '[listener]\nbind = "0.0.0.0"\nport = 1999\n'
        '[storage]\ndata_dir = "/from/file"\nbackend = "sqlite"\n'
        "[limits]\nmax_inflight_messages = 7\n"
        "[log]\nverbose = true\n"
    )
    from_file = parse("-c", str(path))
    assert (from_file.bind, from_file.port, from_file.data_dir) == ("0.0.0.0", 1999, "/from/file")
    assert from_file.max_inflight_messages == 7 and from_file.verbose

    both = parse("--config", str(path), "--port", "2000", "--data-dir", "/from/cli", "--memory")
    assert (both.bind, both.port, both.data_dir, both.backend) == ("0.0.0.0", 2000, "/from/cli", "memory")
    assert both.max_inflight_messages == 7  # untouched by the command line
    assert both.verbose  # no -v does not switch the file's verbose off

    assert parse("-c", str(path), "--bind", "127.0.0.2").bind == "127.0.0.2"


@pytest.mark.parametrize("port", ["-1", "65536", "http", "1.5"])
def test_bad_port_option_is_a_usage_error(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--port", port])
    assert info.value.code == 2
    assert "port" in capsys.readouterr().err


# ---- the real command --------------------------------------------------------------------


def test_help_lists_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m broker")
    for option in ("-c FILE, --config FILE", "--bind ADDR", "-p PORT, --port PORT",
                   "--data-dir DIR", "--memory", "-v, --verbose", "--version", "-h, --help"):
        assert option in result.stdout, option
    for command in ("certs", "backup", "inspect", "passwd"):  # the operator commands, in the epilog
        assert f"\n  {command} " in result.stdout, command


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"edgemq-broker {__version__}"


def test_installed_console_script() -> None:
    script = Path(sys.executable).parent / "edgemq-broker"
    if not script.exists():
        pytest.skip("edgemq is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"edgemq-broker {__version__}"


def test_bad_config_exits_2_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[listener]\nbind = '127.0.0.1'\n\n[limits]\nmax_inflight_messages = 0\n")
    result = run_cli("-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {path}:5: [limits] max_inflight_messages must be between 1 and 65535, got 0"
    )
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()  # nothing was started


def test_config_syntax_error_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "syntax.toml"
    path.write_text("[listener]\nport = = 1\n")
    result = run_cli("--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}:2: TOML syntax error"), result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_cli("-c", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'missing.toml'}: cannot read"), result.stderr


def test_unknown_option_exits_2() -> None:
    result = run_cli("--frobnicate")
    assert result.returncode == 2
    assert "unrecognized arguments: --frobnicate" in result.stderr


# ---- logging -----------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    broker_logger = logging.getLogger("broker")
    saved = (list(root.handlers), root.level, broker_logger.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    broker_logger.setLevel(saved[2])


@pytest.mark.usefixtures("restore_logging")
def test_log_format_and_levels() -> None:
    stream = io.StringIO()
    setup_logging(False, stream)
    logging.getLogger("broker").info("New connection from %s", "127.0.0.1:5000")
    logging.getLogger("broker.core").debug("hidden")
    logging.getLogger("broker").warning("queue full")
    logging.getLogger("asyncio").info("library chatter")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert TIMESTAMPED.match(lines[0]) and lines[0].endswith("broker: New connection from 127.0.0.1:5000")
    assert TIMESTAMPED.match(lines[1]) and lines[1].endswith("broker: warning: queue full")


@pytest.mark.usefixtures("restore_logging")
def test_verbose_logs_debug_of_the_broker_only() -> None:
    stream = io.StringIO()
    setup_logging(True, stream)
    setup_logging(True, stream)  # a second setup replaces the handler, no doubled lines
    logging.getLogger("broker.core").debug("shown")
    logging.getLogger("asyncio").debug("Using selector: EpollSelector")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("broker: shown"), lines


# ---- with the real broker ---------------------------------------------------------------------


def test_listens_on_the_port_it_logs_and_stops_cleanly(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    assert broker.port != 0
    with socket.create_connection((broker.host, broker.port), timeout=5):
        pass
    line = next(l for l in broker.log().splitlines() if "listening on" in l)
    assert TIMESTAMPED.match(line), line
    assert line.endswith(f"listening on 127.0.0.1:{broker.port}")
    assert broker.stop() == 0


def test_file_values_apply_and_command_line_wins(broker_factory: BrokerFactory) -> None:
    # The file's bind address applies; its port is in use, and --port 0 from the fixture must win.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        broker = broker_factory(
            config=f'[listener]\nbind = "127.0.0.2"\nport = {busy}\n',
        )
        assert broker.port not in (0, busy)
        assert broker.host == "127.0.0.2"
        assert f"listening on 127.0.0.2:{broker.port}" in broker.log()
        assert f"configuration loaded from {broker.args[1]}" in broker.log()
    with socket.create_connection(("127.0.0.2", broker.port), timeout=5):
        pass
    assert broker.stop() == 0


def test_memory_backend_writes_nothing(broker_factory: BrokerFactory) -> None:
    broker = broker_factory("--memory")
    assert broker.stop() == 0
    assert not broker.data_dir.exists() or not any(broker.data_dir.iterdir())


def test_sqlite_backend_creates_its_database_in_the_data_dir(broker_factory: BrokerFactory) -> None:
    broker = broker_factory()
    assert broker.stop() == 0
    assert (broker.data_dir / "broker.db").exists()
