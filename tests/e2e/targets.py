"""The brokers the end-to-end suite runs against: ours, or mosquitto as a reference.

``E2E_TARGET=ours`` (the default, what CI runs) starts ``python -m broker``;
``E2E_TARGET=mosquitto`` starts /usr/sbin/mosquitto, which is how the suite
itself was validated before our broker existed. Tests see one ``Target`` shape
either way. Limits are given once, as our TOML ``[limits]`` keys, and are
translated into a mosquitto.conf for the reference broker.

Both processes listen on an OS-assigned port on 127.0.0.1 and are stopped by
their own PID; starting, output and signals are ``tests/brokerprocess.py``'s.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from brokerprocess import BrokerProcess, MosquittoProcess

TARGET_KIND = os.environ.get("E2E_TARGET", "ours").strip().lower()
if TARGET_KIND not in ("ours", "mosquitto"):
    raise RuntimeError(f"E2E_TARGET must be 'ours' or 'mosquitto', not {TARGET_KIND!r}")

LIMIT_KEYS = (
    "max_keepalive", "max_packet_size", "max_queued_messages", "max_inflight_messages", "stalled_subscriber_timeout",
)
# Ours only: mosquitto drops for a slow subscriber at once (it has no backpressure).
OURS_ONLY_KEYS = ("stalled_subscriber_timeout",)
START_TIMEOUT = 15.0


def ours_config(limits: dict[str, int]) -> str:
    """Our broker's TOML configuration for the given limits."""
    lines = ["[limits]"] + [f"{key} = {value}" for key, value in limits.items()]
    return "\n".join(lines) + "\n"


def mosquitto_config(limits: dict[str, int]) -> str:
    """The mosquitto.conf lines that make it equivalent to ours, with the same limits.

    ``MosquittoProcess`` writes the rest: listener, anonymous access, the user
    to run as, logging to stderr, persistence and where it goes.
    """
    lines = [
        "autosave_interval 0",  # save on exit, like a SIGTERM stop of ours
        "max_keepalive 65535",
    ]
    lines += [f"{key} {value}" for key, value in limits.items() if key not in OURS_ONLY_KEYS]
    return "\n".join(lines) + "\n"


class Target:
    """A running broker process: where it listens, and how to stop and restart it.

    The process itself (spawn, output, readiness, signals by PID) is a
    ``BrokerProcess`` or ``MosquittoProcess``; this adds the [limits]
    translation and one shape for both kinds.
    """

    def __init__(self, kind: str, workdir: Path, limits: dict[str, int] | None = None) -> None:
        unknown = set(limits or ()) - set(LIMIT_KEYS)
        if unknown:
            raise ValueError(f"unsupported limits {unknown}")
        self.kind = kind
        self.limits = dict(limits or {})
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process: BrokerProcess | MosquittoProcess
        if kind == "mosquitto":
            # Persistent, and on the same port across restarts.
            self.process = MosquittoProcess(self.data_dir, True, mosquitto_config(self.limits))
        else:
            args: list[str] = []
            if self.limits:
                conf = workdir / "broker.toml"
                conf.write_text(ours_config(self.limits))
                args = ["-c", str(conf)]
            self.process = BrokerProcess(self.data_dir, args, cwd=workdir)
        self.start()

    @property
    def is_ours(self) -> bool:
        return self.kind == "ours"

    @property
    def host(self) -> str:
        return self.process.host

    @property
    def port(self) -> int:
        """Where the current run listens (ours gets a new port at each start)."""
        return self.process.port

    @property
    def pid(self) -> int | None:
        return self.process.proc.pid if self.process.proc else None

    def log(self) -> str:
        """Everything the broker printed, over all its runs."""
        return self.process.log(all_runs=True)

    def start(self) -> None:
        """Start the process and wait until it accepts connections."""
        self.process.start(START_TIMEOUT)

    def alive(self) -> bool:
        return self.process.running

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` to our process and wait for it to exit; returns its exit code."""
        if self.process.proc is None:
            return 0
        return self.process.stop(sig, timeout)

    def kill(self) -> None:
        if self.process.proc is not None:
            self.process.kill()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop gracefully (SIGTERM by default), then start again on the same data."""
        self.stop(sig)
        self.start()

    def __repr__(self) -> str:
        return f"<Target {self.kind} {self.host}:{self.port} pid={self.pid}>"
