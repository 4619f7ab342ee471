"""``python -m broker passwd``: manage a password file, like ``mosquitto_passwd``.

::

    python -m broker passwd -c FILE USER        create FILE with USER (prompts twice)
    python -m broker passwd FILE USER           add USER or change its password
    python -m broker passwd -b FILE USER PASS   the same, password on the command line
    python -m broker passwd -D FILE USER        delete USER
    python -m broker passwd -U FILE             hash a file of user:plaintext lines

Hashes are Argon2id unless ``-H pbkdf2-sha512``. The file is replaced in one rename
with mode 0600; other lines (mosquitto's hashes, comments) are kept as they are.
After a change, ``kill -HUP`` the broker (or ``systemctl reload``) to apply it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from broker.auth import hashing
from broker.auth.password_file import PasswordFileError, read_lines, split_entry, write_atomically


class PasswdError(Exception):
    """Reported as ``Error: ...`` with exit code 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m broker passwd",
        description="Manage a password file (mosquitto's layout; Argon2id hashes by default).",
        epilog="Send the broker SIGHUP to re-read the file.",
    )
    parser.add_argument("-c", dest="create", action="store_true", help="create a new file (overwrites an existing one)")
    parser.add_argument("-D", dest="delete", action="store_true", help="delete the user")
    parser.add_argument("-b", dest="batch", action="store_true", help="batch mode: the password is on the command line")
    parser.add_argument("-U", dest="upgrade", action="store_true", help="hash a file of user:plain-text-password lines")
    parser.add_argument(
        "-H", dest="algorithm", choices=hashing.ALGORITHMS, default=hashing.ARGON2ID,
        help=f"hash algorithm (default {hashing.ARGON2ID})",
    )
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("args", nargs="*", metavar="USER [PASSWORD]")
    return parser


def check_username(user: str) -> None:
    if not user:
        raise PasswdError("the user name must not be empty")
    if ":" in user:
        raise PasswdError("the user name must not contain ':'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in user) or user != user.strip():
        raise PasswdError("the user name must not contain control characters or surrounding spaces")
    try:
        if len(user.encode("utf-8")) > 65535:
            raise PasswdError("the user name is longer than MQTT allows (65535 bytes)")
    except UnicodeEncodeError:
        raise PasswdError("the user name is not valid UTF-8") from None


def read_password(prompt_twice: bool = True) -> str:
    """Prompt on the terminal (twice); without one, read the lines from stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Reenter password: ") if prompt_twice else first
    else:
        first = sys.stdin.readline().rstrip("\r\n")
        second = sys.stdin.readline().rstrip("\r\n") if prompt_twice else first
    if first != second:
        raise PasswdError("Passwords do not match.")
    if not first:
        raise PasswdError("the password must not be empty")
    return first


def _existing_lines(path: str) -> list[str]:
    if not os.path.exists(path):
        raise PasswdError(f"Unable to open password file {path}: it does not exist (use -c to create it).")
    try:
        return read_lines(path)
    except PasswordFileError as exc:
        raise PasswdError(str(exc)) from None


def set_password(lines: list[str], user: str, encoded: str) -> list[str]:
    """The lines with USER's entry replaced (or appended)."""
    result, found = [], False
    for line in lines:
        entry = split_entry(line)
        if entry is not None and entry[0] == user:
            if not found:
                result.append(f"{user}:{encoded}")
                found = True
            continue
        result.append(line)
    if not found:
        result.append(f"{user}:{encoded}")
    return result


def delete_user(lines: list[str], user: str) -> list[str]:
    kept = [line for line in lines if (entry := split_entry(line)) is None or entry[0] != user]
    if len(kept) == len(lines):
        raise PasswdError(f"User {user} not found in password file.")
    return kept


def upgrade(lines: list[str], path: str, algorithm: str) -> list[str]:
    """Hash every plain-text password; entries that already hold a hash we read are kept."""
    result = []
    for number, line in enumerate(lines, start=1):
        entry = split_entry(line)
        if entry is None:
            result.append(line)
            continue
        user, secret = entry
        if not secret:
            raise PasswdError(f"{path}:{number}: user {user!r} has no password")
        try:
            hashing.parse(secret)
            result.append(line)  # already hashed
            continue
        except hashing.BadHash:
            pass
        result.append(f"{user}:{hashing.create(secret.encode('utf-8'), algorithm)}")
    return result


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    path: str = args.file
    if sum((args.create, args.delete, args.upgrade)) > 1:
        raise PasswdError("-c, -D and -U cannot be combined")
    if args.upgrade:
        if args.args:
            raise PasswdError("-U takes only the file")
        write_atomically(path, upgrade(_existing_lines(path), path, args.algorithm))
        return 0
    expected = 2 if args.batch else 1
    if len(args.args) != expected or (args.batch and args.delete):
        usage = "FILE USER PASSWORD" if args.batch else "FILE USER"
        raise PasswdError(f"expected {usage}")
    user = args.args[0]
    check_username(user)
    if args.delete:
        write_atomically(path, delete_user(_existing_lines(path), user))
        return 0
    lines = [] if args.create else _existing_lines(path)
    password = args.args[1] if args.batch else read_password()
    if not password:
        raise PasswdError("the password must not be empty")
    write_atomically(path, set_password(lines, user, hashing.create(password.encode("utf-8"), args.algorithm)))
    return 0


def main(argv: list[str]) -> int:
    try:
        return run(argv)
    except PasswdError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"Error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
