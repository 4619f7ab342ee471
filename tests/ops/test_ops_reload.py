"""SIGHUP re-reads the configuration file: limits and the log level change while the broker
keeps its connections; what needs a restart is named; a broken file changes nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from ops_helpers import close, connect, numbered, offline_subscriber, publish, wait_until

BASE = """
[limits]
max_queued_messages = {limit}
[log]
verbose = {verbose}
[storage]
compact_after_idle = 1
"""


def _config_file(broker) -> Path:
    return Path(broker.args[broker.args.index("-c") + 1])


def _queued_and_delivered(broker, client_id: str, count: int, expected: int) -> None:
    """Queue ``count`` messages for an offline session; exactly ``expected`` are kept for it."""
    offline_subscriber(broker.port, client_id, f"to/{client_id}")
    publish(broker.port, f"to/{client_id}", numbered(count), client_id=f"pub-{client_id}")
    got: list[bytes] = []
    client = connect(broker.port, client_id, clean=False, on_message=lambda m: got.append(m.payload))
    try:
        wait_until(lambda: len(got) >= expected, what=f"{expected} queued messages")
        time.sleep(0.5)  # nothing more arrives: the limit held
        assert got == numbered(expected)
    finally:
        close(client)


def test_sighup_applies_a_new_limit_and_keeps_serving(broker_factory) -> None:
    broker = broker_factory(config=BASE.format(limit=3, verbose="false"))
    watcher = connect(broker.port, "watcher")  # must survive the reload
    _queued_and_delivered(broker, "before", 10, 3)

    _config_file(broker).write_text(BASE.format(limit=6, verbose="true"))
    broker.proc.send_signal(signal.SIGHUP)
    broker.wait_for_log(r"reload: \[limits\] max_queued_messages changed from 3 to 6")
    broker.wait_for_log(r"reload: \[log\] verbose changed from False to True")

    _queued_and_delivered(broker, "after", 10, 6)
    assert watcher.is_connected()
    assert broker.running
    # verbose is on now: the debug line of the compaction after this traffic appears.
    assert "database compacted" not in broker.log()
    broker.wait_for_log("database compacted after")
    close(watcher)
    assert broker.stop() == 0


def test_sighup_names_what_needs_a_restart_and_ignores_a_broken_file(broker_factory) -> None:
    broker = broker_factory(config=BASE.format(limit=3, verbose="false"))
    path = _config_file(broker)
    path.write_text(BASE.format(limit=3, verbose="false").replace("[storage]", '[storage]\nsync = "normal"'))
    broker.proc.send_signal(signal.SIGHUP)
    broker.wait_for_log(r"reload: \[storage\] sync changed in .*: these take effect after a restart")

    path.write_text("[limits]\nmax_queued_messages = -1\n")
    broker.proc.send_signal(signal.SIGHUP)
    broker.wait_for_log(r"reload: .*broker\.toml:2: \[limits\] max_queued_messages must be between .*; "
                        r"the configuration is unchanged")
    _queued_and_delivered(broker, "device", 5, 3)
    assert broker.running


def test_sighup_without_changes(broker_factory) -> None:
    broker = broker_factory(config=BASE.format(limit=3, verbose="false"))
    broker.proc.send_signal(signal.SIGHUP)
    broker.wait_for_log(r"reload: .*broker\.toml: no changes")
    # Options from the command line (--port 0, --data-dir) are not reported as changes.
    assert "after a restart" not in broker.log()
