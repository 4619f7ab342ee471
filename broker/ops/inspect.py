"""``python -m broker inspect [--json]``: sessions, queues, retained messages, database size.

Read-only. While the broker runs it answers over its control socket from what it holds
in memory (it also knows which clients are connected); when it is stopped the database
file is opened read-only.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from typing import TYPE_CHECKING, Any

from broker.ops import control
from broker.ops.cli import add_location_options, database_path, fail, resolve_data_dir
from broker.ops.metrics import database_bytes, retained_count

if TYPE_CHECKING:
    from broker.core.engine import Engine

Snapshot = dict[str, Any]


def _summary(sessions: list[dict[str, Any]], retained: int, db_path: str | None, source: str) -> Snapshot:
    sessions.sort(key=lambda s: (-s["queued_messages"], s["client_id"]))
    return {
        "source": source,
        "database": db_path,
        "database_bytes": database_bytes(db_path),
        "retained_messages": retained,
        "sessions_total": len(sessions),
        "queued_messages": sum(s["queued_messages"] for s in sessions),
        "queued_bytes": sum(s["queued_bytes"] for s in sessions),
        "sessions": sessions,
    }


def snapshot_from_engine(engine: Engine, db_path: str | None) -> Snapshot:
    """What the running broker holds (called on its event loop, by the control socket)."""
    sessions = []
    for session in list(engine.sessions.values()):
        inflight = len(session.inflight)
        sessions.append({
            "client_id": session.client_id,
            "connected": session.connection is not None,
            "persistent": session.persistent,
            # Not acknowledged yet: waiting to be sent, plus sent and awaiting PUBACK/PUBCOMP.
            "queued_messages": session.queued_count + inflight,
            "queued_bytes": session.queued_bytes + sum(len(e.message.payload) for e in session.inflight.values()),
            "inflight_messages": inflight,
            "subscriptions": len(session.subscriptions),
        })
    return _summary(sessions, retained_count(engine), db_path, "running broker")


def snapshot_from_file(db_path: str) -> Snapshot:
    """The stored state of a stopped broker, read through a read-only connection."""
    uri = "file:" + os.path.abspath(db_path) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=1.0)
    try:
        rows = db.execute(
            """SELECT s.client_id,
                   (SELECT COUNT(*) FROM queue q WHERE q.client_id = s.client_id),
                   (SELECT COALESCE(SUM(LENGTH(m.payload)), 0) FROM queue q
                        JOIN messages m ON m.id = q.message_id WHERE q.client_id = s.client_id),
                   (SELECT COUNT(*) FROM queue q WHERE q.client_id = s.client_id AND q.state != 0),
                   (SELECT COUNT(*) FROM subscriptions u WHERE u.client_id = s.client_id)
               FROM sessions s"""
        ).fetchall()
        retained = db.execute("SELECT COUNT(*) FROM retained").fetchone()[0]
    finally:
        db.close()
    sessions = [
        {"client_id": client_id, "connected": False, "persistent": True, "queued_messages": count,
         "queued_bytes": size, "inflight_messages": sent, "subscriptions": subs}
        for client_id, count, size, sent, subs in rows
    ]
    return _summary(sessions, retained, db_path, "database file (broker stopped)")


def take_snapshot(data_dir: str) -> Snapshot:
    """Ask the running broker, or read the file when none answers."""
    try:
        answer = control.request(control.socket_path(data_dir), {"command": "inspect"}, timeout=30)
    except control.BrokerNotRunning:
        db_path = database_path(data_dir)
        if not os.path.exists(db_path):
            raise FileNotFoundError(f"no database at {db_path} and no broker answers on its control socket")
        return snapshot_from_file(db_path)
    if "error" in answer:
        raise RuntimeError(answer["error"])
    return answer


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def render(snapshot: Snapshot) -> str:
    lines = [
        f"source:            {snapshot['source']}",
        f"database:          {snapshot['database']} ({_human_size(snapshot['database_bytes'])} with its WAL)",
        f"retained messages: {snapshot['retained_messages']}",
        f"sessions:          {snapshot['sessions_total']}",
        f"queued:            {snapshot['queued_messages']} messages, {_human_size(snapshot['queued_bytes'])}",
    ]
    sessions = snapshot["sessions"]
    if sessions:
        width = max(9, *(len(s["client_id"]) for s in sessions))
        lines.append("")
        lines.append(f"{'client id':<{width}}  {'state':<12}  {'queued':>8}  {'bytes':>10}  {'inflight':>8}  subs")
        for s in sessions:
            state = "connected" if s["connected"] else "disconnected"
            lines.append(
                f"{s['client_id']:<{width}}  {state:<12}  {s['queued_messages']:>8}  {s['queued_bytes']:>10}"
                f"  {s['inflight_messages']:>8}  {s['subscriptions']}"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m broker inspect",
        description="Show sessions (queued messages and bytes, in-flight, subscriptions), retained messages"
        " and the database size. Read-only; asks the running broker, or reads the file when it is stopped.",
    )
    add_location_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args)
    if isinstance(data_dir, int):
        return data_dir
    try:
        snapshot = take_snapshot(data_dir)
    except (OSError, RuntimeError, sqlite3.Error) as exc:
        return fail(str(exc))
    print(json.dumps(snapshot, indent=2) if args.json else render(snapshot))
    sys.stdout.flush()
    return 0
