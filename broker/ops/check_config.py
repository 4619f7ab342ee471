"""``python -m broker --check-config -c FILE``, like ``nginx -t``: is this configuration usable?

Loads the configuration the way the broker would (file, then options) and checks what
it names that the broker would touch at start-up: the data directory, the database
file, the listener addresses. Problems are listed and the exit code is 2; warnings
(things that depend on the account the broker runs as) do not change the exit code.
Checks of further files (password, ACL, certificate files) are added to ``CHECKS``
by the modules that read those files.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.config import Config
from broker.config_file import ConfigError
from broker.storage.factory import DB_FILE_NAME

EXIT_OK = 0
EXIT_PROBLEMS = 2
CAP_NET_BIND_SERVICE = 10


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


Check = Callable[[Config, Report], None]


def check_data_dir(config: Config, report: Report) -> None:
    if config.backend != "sqlite":
        return
    directory = os.path.abspath(config.data_dir)
    if os.path.isdir(directory):
        if not os.access(directory, os.W_OK | os.X_OK):
            report.problems.append(f"[storage] data_dir {directory} is not writable by this user")
    elif os.path.exists(directory):
        report.problems.append(f"[storage] data_dir {directory} exists but is not a directory")
    else:
        parent = directory
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            report.problems.append(f"[storage] data_dir {directory} does not exist and cannot be created"
                                   f" ({parent} is not a writable directory)")
        return
    db_path = os.path.join(directory, DB_FILE_NAME)
    if os.path.exists(db_path):
        check_database(db_path, report)


def check_database(db_path: str, report: Report) -> None:
    try:
        db = sqlite3.connect("file:" + db_path + "?mode=ro", uri=True, timeout=0.5)
        try:
            rows = db.execute("PRAGMA quick_check(5)").fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            report.warnings.append(f"{db_path} is in use by a running broker; not checked")
        else:
            report.problems.append(f"{db_path}: {exc}")
        return
    except sqlite3.DatabaseError as exc:
        report.problems.append(f"{db_path} is not a usable database ({exc}); the broker would move it"
                               " aside and start with an empty database")
        return
    if rows != [("ok",)]:
        report.problems.append(f"{db_path} is damaged ({'; '.join(str(r[0]) for r in rows)});"
                               " the broker would move it aside and start with an empty database")


def _has_capability(bit: int) -> bool:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def check_address(what: str, host: str, port: int, report: Report) -> None:
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        report.problems.append(f"{what} address {host!r} cannot be resolved: {exc.strerror}")
    if 0 < port < 1024 and not _has_capability(CAP_NET_BIND_SERVICE):
        report.warnings.append(
            f"{what} port {port} is below 1024: the broker needs CAP_NET_BIND_SERVICE"
            " (AmbientCapabilities= in the systemd unit, see docs/raspberry-pi.md) or root"
        )


def check_listeners(config: Config, report: Report) -> None:
    check_address("[listener]", config.bind, config.port, report)
    if config.metrics_enabled:
        check_address("[metrics]", config.metrics_bind, config.metrics_port, report)
        if config.metrics_port == config.port and config.port != 0:
            report.problems.append(f"[metrics] metrics_port {config.metrics_port} is also the MQTT port")


CHECKS: list[Check] = [check_data_dir, check_listeners]


def check(config: Config) -> Report:
    report = Report()
    for run_check in CHECKS:
        run_check(config, report)
    return report


def check_and_report(load: Callable[[], Config], path: str | None) -> int:
    """Print the problems and warnings; 0 when the broker could start with this configuration."""
    name = path or "the default configuration"
    try:
        config = load()
    except ConfigError as exc:
        print(f"{name}: 1 problem\n  error: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    report = check(config)
    for warning in report.warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    if report.problems:
        count = len(report.problems)
        print(f"{name}: {count} problem{'s' if count > 1 else ''}", file=sys.stderr)
        for problem in report.problems:
            print(f"  error: {problem}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"{name}: configuration OK")
    return EXIT_OK
