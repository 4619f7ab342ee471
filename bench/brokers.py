"""The three brokers under test as child processes: ours, mosquitto and amqtt.

Each runs on 127.0.0.1 with a port of its own, writes its log to a file in the
run directory (a file, unlike a pipe, never blocks a busy broker), gets a high
open-file limit (5000 idle connections need as many descriptors), and is
stopped by its PID.
"""

from __future__ import annotations

import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LISTENING = re.compile(r"listening on (\S+):(\d+)")
TLS_LISTENING = re.compile(r"mqtt over TLS \S+ .*listening on (\S+):(\d+)")
WS_LISTENING = re.compile(r"websockets \(ws, [^)]*\) listening on (\S+):(\d+)")
WS_PATH = "/mqtt"  # the websockets listeners' path (ours' default; mosquitto accepts any path)


class TLSFiles:
    """The CA, server certificate and key that every broker's TLS listener uses (from broker.certs)."""

    def __init__(self, directory: Path) -> None:
        from broker import certs

        where = certs.paths(directory)
        if not where.server_cert.exists():
            certs.init(directory, hosts=["localhost"], ips=["127.0.0.1"])
        self.ca = where.ca_cert
        self.cert = where.server_cert
        self.key = where.server_key

# Mosquitto's settings, chosen to match ours where the behaviour under load depends on them.
MOSQUITTO_SETTINGS = (
    "persistence false",
    # Ours allows 20 unacknowledged outgoing QoS 1/2 messages per client (its default); so does this.
    "max_inflight_messages 20",
    # The load never has more than --transit messages queued per subscriber, but mosquitto 2.0.11
    # dropped QoS 1 messages ("Outgoing messages are being dropped") with a limit of 100000 even
    # so; with this limit it never did.
    "max_queued_messages 10000000",
    # TCP_NODELAY stays off (mosquitto's default): with `set_tcp_nodelay true` every PUBLISH
    # leaves as a segment of its own, and mosquitto's QoS 0 and QoS 1 throughput here halved.
)


LOWEST_PICKED_PORT = 10000


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port free now, for programs that cannot be told to use port 0 (mosquitto; a broker
    restarted on the same port), or for nothing to listen on.

    Picked at random below the kernel's ephemeral range and checked by binding it. A port
    from binding port 0 is in that range, so until the program binds it, every other
    process's bind to port 0 and every outgoing connection may take it: with tests running
    in parallel (pytest -n), a broker then failed with "Address already in use".
    """
    top = _ephemeral_ports_start()
    for _ in range(200):
        port = random.randrange(LOWEST_PICKED_PORT, top) if top > LOWEST_PICKED_PORT + 1000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (or in TIME_WAIT): another one
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free port found in {LOWEST_PICKED_PORT}..{top - 1}")


def raise_nofile_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted``; returns it.

    The soft limit goes up to the hard limit; a privileged process (root, CAP_SYS_RESOURCE) also
    raises the hard limit when it is below ``wanted`` (50,000 idle connections need as many
    descriptors in the broker, and container defaults are often lower). Children inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass  # not privileged: the hard limit stays
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _child_limits(nofile: int) -> Callable[[], None]:
    """preexec_fn for brokers and the load generator: the same ``ulimit -n`` as the bench."""

    def apply() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

    return apply


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS from /proc/PID/status), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class BrokerError(RuntimeError):
    """A broker did not start, or died."""


class Broker:
    """One broker process; subclasses say how to start it and how to know it is ready."""

    key = "broker"
    label = "broker"

    def __init__(self, workdir: Path, nofile: int, tls: TLSFiles | None = None, ws: bool = False) -> None:
        self.workdir = workdir
        self.nofile = nofile
        self.host = "127.0.0.1"
        self.port = 0
        self.tls = tls  # with files: a second listener, MQTT over TLS, on tls_port
        self.tls_port = 0
        self.ws = ws  # a listener for MQTT over WebSockets (ws://, WS_PATH) on ws_port
        self.ws_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.key}.log"
        self.starts = 0
        # Scale scenarios (bench/scale.py): more plain listeners (ports beyond the first in
        # extra_ports: one destination port gives at most the ephemeral port range of
        # connections), and restarts on the same port and data (persistent sessions).
        self.plain_listeners = 1
        self.extra_ports: list[int] = []
        self.restartable = False  # restarts keep port and data; mosquitto: persistence on

    # --- to be provided by subclasses
    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files, choose a port: whatever must happen before each start."""

    def env(self) -> dict[str, str] | None:
        return None

    def version(self) -> str:
        raise NotImplementedError

    def settings(self) -> list[str]:
        """How this broker is configured, for the report."""
        raise NotImplementedError

    def port_for(self, listener: str) -> int:
        """The port of the listener a scenario uses ("plain", "tls" or "ws", see Scenario.listener)."""
        return {"plain": self.port, "tls": self.tls_port, "ws": self.ws_port}[listener]

    def _wait_ready(self, deadline: float) -> None:
        """Default readiness: the ports (plain, TLS and WebSockets) accept TCP connections."""
        ports = self.plain_ports + [self.tls_port] * (self.tls is not None) + [self.ws_port] * self.ws
        for port in ports:
            while True:
                self._check_alive("before accepting connections")
                try:
                    with socket.create_connection((self.host, port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise BrokerError(f"{self.label} not accepting connections on port {port}\n{self.log_tail()}")
                    time.sleep(0.05)

    # --- shared behaviour
    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.label} not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def plain_ports(self) -> list[int]:
        return [self.port, *self.extra_ports]

    def start(self) -> None:
        self.launch()
        self._wait_ready(time.monotonic() + STARTUP_TIMEOUT)

    def launch(self) -> None:
        """Start the process without waiting for it to be ready (restart timing waits its own way)."""
        assert not self.running, f"{self.label} already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {self.starts}: {shlex.join(self.command())}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env(),
                preexec_fn=_child_limits(self.nofile),
            )

    def stop(self) -> None:
        """SIGTERM (SIGINT for amqtt), then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    stop_signal = signal.SIGTERM

    def _check_alive(self, when: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BrokerError(
                f"{self.label} exited with code {self.proc.returncode} {when}\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def rss_kib(self) -> int:
        return rss_kib(self.pid)


class OursBroker(Broker):
    """``python -m broker`` from this checkout, default (durable SQLite) unless told otherwise."""

    key = "ours"
    label = "ours"

    def __init__(
        self, workdir: Path, nofile: int, extra_args: list[str] | None = None, tls: TLSFiles | None = None,
        ws: bool = False,
    ) -> None:
        super().__init__(workdir, nofile, tls, ws)
        self.extra_args = list(extra_args or [])
        self.data_dir = workdir / "ours-data"
        self.listeners_config = workdir / "ours-listeners.toml"

    def command(self) -> list[str]:
        # With TLS or WebSockets: a [[listener]] table for each; --port 0 adds the plain listener in front.
        # With several plain listeners: a table for each (port 0: the OS chooses), and no --port.
        tables = self.tls is not None or self.ws or self.plain_listeners > 1
        config = ["-c", str(self.listeners_config)] if tables else []
        port = [] if self.plain_listeners > 1 else ["--port", str(self.port if self.restartable else 0)]
        return [sys.executable, "-m", "broker", *config, *port, "--data-dir", str(self.data_dir),
                *self.extra_args]

    def prepare(self) -> None:
        if self.restartable and self.starts > 0:
            return  # a restart: same port, same data
        # A fresh database for each start, so one round's leftovers never slow the next.
        shutil.rmtree(self.data_dir, ignore_errors=True)
        tables = []
        if self.plain_listeners > 1:
            tables += ["[[listener]]\nport = 0\n"] * self.plain_listeners
        if self.tls is not None:
            tables.append(f'[[listener]]\nport = 0\ncertfile = "{self.tls.cert}"\nkeyfile = "{self.tls.key}"\n')
        if self.ws:
            tables.append(f'[[listener]]\nport = 0\nprotocol = "websockets"\nwebsocket_path = "{WS_PATH}"\n')
        if tables:
            self.listeners_config.write_text("\n".join(tables))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return env

    def _wait_ready(self, deadline: float) -> None:
        while True:
            self._check_alive("before listening")
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
                match = LISTENING.search(text)
            tls_match = TLS_LISTENING.search(text) if self.tls is not None else None
            ws_match = WS_LISTENING.search(text) if self.ws else None
            plain = LISTENING.findall(text) if self.plain_listeners > 1 else []
            if (match and (self.tls is None or tls_match) and (not self.ws or ws_match)
                    and (self.plain_listeners == 1 or len(plain) >= self.plain_listeners)):
                host = match.group(1).strip("[]")
                self.host = {"0.0.0.0": "127.0.0.1"}.get(host, host)
                self.port = int(match.group(2))
                self.extra_ports = [int(p) for _, p in plain[1:]]
                self.tls_port = int(tls_match.group(2)) if tls_match else 0
                self.ws_port = int(ws_match.group(2)) if ws_match else 0
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"ours printed no 'listening on HOST:PORT' line\n{self.log_tail()}")
            time.sleep(0.05)

    def version(self) -> str:
        from broker import __version__

        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "broker")
        loop = "uvloop " + _dist_version("uvloop") if _dist_version("uvloop") else "asyncio loop"
        described = f"{__version__} (commit {commit}{', broker/ modified' if dirty else ''})"
        return f"{described}, {loop}"

    def settings(self) -> list[str]:
        mode = "`--memory` (nothing persisted)" if "--memory" in self.extra_args else "default durable mode (SQLite, QoS 1/2 acknowledged after the group commit's fsync, QoS 1 also once every persistent subscriber has acknowledged it)"
        args = f" {shlex.join(self.extra_args)}" if self.extra_args else ""
        lines = [f"`python -m broker --port 0 --data-dir DIR{args}`: {mode}, defaults otherwise (20 in-flight messages per client)"]
        if self.tls is not None:
            lines.append("TLS scenarios: a `[[listener]]` with `port`, `certfile`, `keyfile` (ECDSA P-256 from `python -m broker certs`; TLS 1.2+)")
        if self.ws:
            lines.append(f'WebSockets scenarios: a `[[listener]]` with `port`, `protocol = "websockets"`, `websocket_path = "{WS_PATH}"`')
        return lines


class MosquittoBroker(Broker):
    """Debian's mosquitto with persistence off (the issue's reference)."""

    key = "mosquitto"
    label = "mosquitto"
    stop_signal = signal.SIGTERM

    def __init__(
        self, workdir: Path, nofile: int, tls: TLSFiles | None = None, ws: bool = False, default_limits: bool = False
    ) -> None:
        super().__init__(workdir, nofile, tls, ws)
        self.config_path = workdir / "mosquitto.conf"
        # Free-running scenarios (issue 13) compare both brokers with their default queue limit
        # (1000 messages per client): no raised max_queued_messages.
        self.default_limits = default_limits

    @property
    def tuned_settings(self) -> tuple[str, ...]:
        settings: tuple[str, ...] = MOSQUITTO_SETTINGS
        if self.restartable:
            # Persistent sessions across a restart: without persistence mosquitto has nothing to restore.
            settings = tuple(x for x in settings if not x.startswith("persistence "))
            settings += ("persistence true", f"persistence_location {self.workdir}/")
        if not self.default_limits:
            return settings
        return tuple(x for x in settings if not x.startswith("max_queued_messages"))

    def command(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self.config_path)]

    def config_lines(self) -> list[str]:
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name  # as root, mosquitto would switch to user "mosquitto"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"user {user}",
            "log_dest stderr",
            *self.tuned_settings,
        ]
        if self.tls is not None:
            lines += [f"listener {self.tls_port} 127.0.0.1", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}"]
        if self.ws:
            lines += [f"listener {self.ws_port} 127.0.0.1", "protocol websockets"]
        lines += [f"listener {port} 127.0.0.1" for port in self.extra_ports]
        return lines

    def prepare(self) -> None:
        if not os.path.exists(MOSQUITTO):
            raise BrokerError(f"{MOSQUITTO} not found: apt-get install mosquitto")
        if self.restartable and self.starts > 0:
            return  # a restart: same port, same persistence file
        if self.restartable:
            (self.workdir / "mosquitto.db").unlink(missing_ok=True)
        self.port = free_port()
        self.extra_ports = [free_port() for _ in range(self.plain_listeners - 1)]
        if self.tls is not None:
            self.tls_port = free_port()
        if self.ws:
            self.ws_port = free_port()
        self.config_path.write_text("\n".join(self.config_lines()) + "\n")

    def version(self) -> str:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout
        match = re.search(r"mosquitto version (\S+)", out)
        return match.group(1) if match else "unknown"

    def settings(self) -> list[str]:
        lines = ["mosquitto.conf: `listener PORT 127.0.0.1`, `allow_anonymous true`, " + ", ".join(f"`{s}`" for s in MOSQUITTO_SETTINGS),
                 "free-running scenarios: a second mosquitto without `max_queued_messages`, i.e. its default of 1000, "
                 "the same limit as ours"]
        if self.tls is not None:
            lines.append("TLS scenarios: `listener TLSPORT 127.0.0.1` with `certfile` and `keyfile` (the same files as ours)")
        if self.ws:
            lines.append("WebSockets scenarios: `listener WSPORT 127.0.0.1` with `protocol websockets`")
        return lines

    @classmethod
    def websockets_refusal(cls, workdir: Path, nofile: int) -> str | None:
        """None if this mosquitto starts with a websockets listener; otherwise why not (from its log).

        Builds without libwebsockets cannot open one; the WebSockets scenarios then run without
        mosquitto (and the report says why) instead of failing. Debian's 2.0.11 does open one next
        to the plain listener, as here; only a config whose sole listener is websockets makes it
        exit with "Unable to start any listening sockets" (it counts its TCP listeners only).
        """
        probe = cls(workdir, nofile, ws=True)
        try:
            probe.start()
        except BrokerError as exc:
            errors = [line.split(": ", 1)[-1] for line in probe.log_tail().splitlines() if "Error" in line]
            return errors[-1] if errors else str(exc).splitlines()[0]
        finally:
            probe.stop()
        return None


class AmqttBroker(Broker):
    """amqtt from PyPI, with only the anonymous-auth plugin (no $SYS topics, no packet logging)."""

    key = "amqtt"
    label = "amqtt"
    # amqtt's script stops cleanly on KeyboardInterrupt only.
    stop_signal = signal.SIGINT

    def __init__(self, workdir: Path, nofile: int) -> None:
        super().__init__(workdir, nofile)
        self.config_path = workdir / "amqtt.yaml"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(self.config_path)]

    def prepare(self) -> None:
        if not _dist_version("amqtt"):
            raise BrokerError("amqtt is not installed: pip install amqtt")
        self.port = free_port()
        self.config_path.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )

    def version(self) -> str:
        return _dist_version("amqtt") or "not installed"

    def settings(self) -> list[str]:
        return [
            "`python -m amqtt.scripts.broker_script -c amqtt.yaml`: one TCP listener on 127.0.0.1:PORT, "
            "plugins: only `AnonymousAuthPlugin` (`allow_anonymous: true`), so no $SYS publishing and no packet logging"
        ]


BROKER_KEYS = ("ours", "mosquitto", "amqtt")


TLS_BROKERS = ("ours", "mosquitto")  # amqtt is measured without TLS
WS_BROKERS = ("ours", "mosquitto")  # and without WebSockets


def make_broker(
    key: str, workdir: Path, nofile: int, ours_args: list[str], tls: TLSFiles | None = None, ws: bool = False,
    default_limits: bool = False,
) -> Broker:
    """``default_limits``: the broker's own queue limits (ours always runs with its defaults)."""
    if key == "ours":
        return OursBroker(workdir, nofile, ours_args, tls, ws)
    if key == "mosquitto":
        return MosquittoBroker(workdir, nofile, tls, ws, default_limits)
    if key == "amqtt":
        return AmqttBroker(workdir, nofile)
    raise ValueError(f"unknown broker {key!r} (choose from {', '.join(BROKER_KEYS)})")


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
