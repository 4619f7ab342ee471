"""``python -m broker``: read the configuration (defaults, then the file, then options) and run.

Without arguments it listens on 127.0.0.1:1883 and keeps its database under
./data, like mosquitto 2 without a configuration file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from broker import __version__
from broker.config import Config, with_plain_listener
from broker.config_file import ConfigError, load_config
from broker.logsetup import setup_logging, use_priority_prefix

PROG = "edgemq-broker"  # the console script's name
EXIT_CONFIG_ERROR = 2  # like argparse's usage errors

log = logging.getLogger("broker")


def _port(text: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    defaults = Config()
    invoked_as_module = sys.argv[0].endswith("__main__.py")
    parser = argparse.ArgumentParser(
        prog="python -m broker" if invoked_as_module else PROG,
        description="An MQTT 3.1.1 and 5.0 broker for IoT and edge devices, "
        "with persistent sessions in SQLite.",
        epilog="Options given here override the configuration file.\n"
        "Stop the broker with SIGTERM or Ctrl-C: queued messages and sessions are kept.\n\n"
        "operator commands (python -m broker COMMAND --help):\n"
        + "\n".join(f"  {name:<10}{text}" for name, (_, text) in SUBCOMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-c", "--config", metavar="FILE", help="TOML configuration file (see config/broker.toml)"
    )
    parser.add_argument(
        "--bind", metavar="ADDR", help=f"address of the plain MQTT listener (default {defaults.bind})"
    )
    parser.add_argument(
        "-p", "--port", type=_port, metavar="PORT",
        help=f"TCP port of the plain MQTT listener; 0 picks a free one (default {defaults.port}); "
        "with [[listener]] tables: the first plain one",
    )
    parser.add_argument(
        "--data-dir", metavar="DIR",
        help=f"directory of the SQLite database (default {defaults.data_dir})",
    )
    parser.add_argument(
        "--memory", action="store_true",
        help="keep everything in memory (nothing is persisted; sessions are lost on stop)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages and every packet in and out, as mosquitto -v")
    parser.add_argument(
        "--check-config", action="store_true",
        help="check the configuration and the files it names, list the problems, exit 0 (fine) or 2",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, overridden by the file (``-c``), overridden by the other options."""
    config = load_config(args.config) if args.config else Config()
    if args.bind is not None:
        config.bind = args.bind
    if args.port is not None:
        config.port = args.port
    if config.listeners and (args.bind is not None or args.port is not None):
        config.listeners = with_plain_listener(config.listeners, args.bind, args.port, config)
    if args.data_dir is not None:
        config.data_dir = args.data_dir
    if args.memory:
        config.backend = "memory"
    if args.verbose:
        config.verbose = True
    if config.verbose:
        config.log_packets = True
    return config


# Operator commands, ``python -m broker NAME ...``: each module has ``main(argv) -> int``.
# They are imported only when used, so the broker itself loads none of them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one line of help)
    "certs": ("broker.certs.cli", "make a CA, the broker's TLS certificate and device certificates"),
    "backup": ("broker.ops.backup", "copy the database consistently, also while the broker runs"),
    "inspect": ("broker.ops.inspect", "sessions, queues, retained messages and database size (read-only)"),
    "passwd": ("broker.auth.passwd", "manage a password file, like mosquitto_passwd"),
}


def run_subcommand(name: str, argv: Sequence[str]) -> int:
    import importlib

    module_name, _ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    return int(module.main(list(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, set up logging and run the broker; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return run_subcommand(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    if args.check_config:
        from broker.ops.check_config import check_and_report

        return check_and_report(lambda: config_from_args(args), args.config)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    setup_logging(config.verbose, priority_prefix=use_priority_prefix(config.priority_prefix))
    if args.config:
        log.info("configuration loaded from %s", args.config)
    from broker.server.app import run  # after parsing, so --help works even if the server cannot import

    try:
        return run(config, args.config)
    except KeyboardInterrupt:  # Ctrl-C before the server installed its own handler
        return 130


if __name__ == "__main__":
    sys.exit(main())
