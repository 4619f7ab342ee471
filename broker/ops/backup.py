"""``python -m broker backup DEST``: a consistent copy of the database, broker running or not.

A running broker makes the copy itself with SQLite's online backup API (it holds the
file exclusively) into its data directory, and streams it over the control socket;
this command writes it to ``DEST`` through a temporary file, fsyncs it, checks it
with ``PRAGMA integrity_check`` and only then renames it into place. With the broker
stopped, the file is copied the same way through a read-only connection.

Restore: stop the broker, replace ``<data_dir>/broker.db`` with the copy (and remove
any ``broker.db-wal`` / ``broker.db-shm`` beside it), start the broker.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import tempfile
from typing import TYPE_CHECKING, Any

from broker.ops import control
from broker.ops.cli import add_location_options, database_path, fail, resolve_data_dir

if TYPE_CHECKING:
    from broker.storage.sqlite import SqliteStorage


async def backup_in_broker(storage: SqliteStorage, data_dir: str) -> control.Answer:
    """Control-socket handler: copy into a temporary file in the data directory, sent and deleted
    by the control server (under systemd the broker may write only there)."""
    handle, temporary = tempfile.mkstemp(prefix="backup-", suffix=".db.tmp", dir=data_dir)
    os.close(handle)
    try:
        await storage.backup(temporary)
    except BaseException:
        os.unlink(temporary)
        raise
    answer: dict[str, Any] = {"ok": True}
    return answer, temporary


def backup_file(db_path: str, destination: str) -> None:
    """Copy a stopped broker's database with the backup API (read-only on the source)."""
    uri = "file:" + os.path.abspath(db_path) + "?mode=ro"
    source = sqlite3.connect(uri, uri=True, timeout=1.0)
    try:
        target = sqlite3.connect(destination)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def check_copy(path: str) -> str | None:
    """None if the copy is a sound database, else what is wrong with it."""
    try:
        db = sqlite3.connect("file:" + os.path.abspath(path) + "?mode=ro", uri=True)
        try:
            rows = db.execute("PRAGMA integrity_check").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows)


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_backup(data_dir: str, destination: str) -> str:
    """Write the backup to ``destination``; returns where it came from."""
    destination = os.path.abspath(destination)
    directory = os.path.dirname(destination)
    handle, temporary = tempfile.mkstemp(prefix=".edgemq-backup-", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        try:
            answer = control.request(control.socket_path(data_dir), {"command": "backup"}, attachment_to=temporary)
            if "error" in answer:
                raise RuntimeError(f"the broker could not make the backup: {answer['error']}")
            source = "running broker"
        except control.BrokerNotRunning:
            db_path = database_path(data_dir)
            if not os.path.exists(db_path):
                raise FileNotFoundError(f"no database at {db_path} and no broker answers on its control socket")
            os.unlink(temporary)  # sqlite3 creates it
            backup_file(db_path, temporary)
            source = "database file (broker stopped)"
        problem = check_copy(temporary)
        if problem is not None:
            raise RuntimeError(f"the copy failed its integrity check: {problem}")
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, destination)
        _fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return source


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m broker backup",
        description="Copy the broker's database consistently, also while it runs (SQLite online backup).",
        epilog="Restore: stop the broker, copy the backup to <data_dir>/broker.db, delete broker.db-wal"
        " and broker.db-shm if present, start the broker.",
    )
    parser.add_argument("destination", metavar="DEST", help="file to write (replaced if it exists)")
    add_location_options(parser)
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args)
    if isinstance(data_dir, int):
        return data_dir
    if os.path.isdir(args.destination):
        return fail(f"{args.destination} is a directory; give a file name such as {args.destination}/broker.db")
    try:
        source = make_backup(data_dir, args.destination)
    except (OSError, RuntimeError, sqlite3.Error) as exc:
        return fail(str(exc))
    print(f"backup of {database_path(data_dir)} ({source}) written to {args.destination}"
          f" ({os.path.getsize(args.destination)} bytes)")
    return 0
