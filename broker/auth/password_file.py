"""The password file: ``user:hash`` lines, the layout of mosquitto's, read and written whole.

Blank lines and lines starting with ``#`` are skipped (as mosquitto does). A bad
line stops the read with ``PasswordFileError("passwords:3: ...")``; the caller
keeps its previous users, so a typo on reload never opens or closes the broker
to everyone.
"""

from __future__ import annotations

import os
import tempfile

from broker.auth.hashing import BadHash, PasswordHash, parse


class PasswordFileError(Exception):
    """The file cannot be used; the message names the file and the line."""


def read_lines(path: str) -> list[str]:
    """The file's lines without line ends; a missing or unreadable file is an error."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except OSError as exc:
        raise PasswordFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PasswordFileError(f"{path}:{line}: not valid UTF-8") from None
    return text.splitlines()


def split_entry(line: str) -> tuple[str, str] | None:
    """``(user, rest)`` for a ``user:rest`` line; None for a blank or comment line."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    user, sep, rest = stripped.partition(":")
    return (user, rest) if sep else (stripped, "")


def load(path: str) -> dict[str, PasswordHash]:
    """Read the users and their parsed hashes, or raise PasswordFileError."""
    users: dict[str, PasswordHash] = {}
    for number, line in enumerate(read_lines(path), start=1):
        entry = split_entry(line)
        if entry is None:
            continue
        user, encoded = entry
        where = f"{path}:{number}"
        if not user:
            raise PasswordFileError(f"{where}: empty user name")
        if not encoded:
            raise PasswordFileError(f"{where}: user {user!r} has no password hash (expected user:hash)")
        if user in users:
            raise PasswordFileError(f"{where}: user {user!r} appears twice")
        try:
            users[user] = parse(encoded)
        except BadHash as exc:
            raise PasswordFileError(f"{where}: user {user!r}: {exc}") from None
    return users


def write_atomically(path: str, lines: list[str]) -> None:
    """Replace ``path`` with ``lines`` in one rename, mode 0600: never half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".passwd-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.writelines(line + "\n" for line in lines)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
