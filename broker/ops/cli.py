"""What the operator commands share: finding the data directory the broker uses."""

from __future__ import annotations

import argparse
import os
import sys

from broker.config import Config
from broker.config_file import ConfigError, load_config
from broker.storage.factory import DB_FILE_NAME

EXIT_FAILURE = 1
EXIT_USAGE = 2


def add_location_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="the broker's configuration file (its [storage] data_dir is used)")
    parser.add_argument("--data-dir", metavar="DIR", help="the broker's data directory (overrides -c)")


def data_dir_from(args: argparse.Namespace) -> str:
    """The data directory as the broker would use it: --data-dir, else -c FILE, else the default.

    Raises ConfigError for a bad configuration file.
    """
    if args.data_dir:
        return str(args.data_dir)
    config = load_config(args.config) if args.config else Config()
    return config.data_dir


def database_path(data_dir: str) -> str:
    return os.path.join(data_dir, DB_FILE_NAME)


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def resolve_data_dir(args: argparse.Namespace) -> str | int:
    """The data directory, or an exit code after printing why there is none."""
    try:
        return data_dir_from(args)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
