"""``python -m broker inspect [--json]``: sessions, queues, retained messages, database size.

``oldest_queued_age`` (per session and overall) is how many seconds ago the broker received
the oldest message still queued (not acknowledged): a consumer that stopped shows a growing
age. It is null when nothing is queued, and also when the arrival time is unknown (messages
stored by a broker before schema 3): then ``queued_messages`` is not 0.

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
import time
from typing import TYPE_CHECKING, Any

from broker.ops import control
from broker.ops.cli import add_location_options, database_path, fail, resolve_data_dir
from broker.ops.metrics import database_bytes, retained_count
from broker.storage.base import oldest_received
from broker.storage.sqlite import OLDEST_QUEUED, oldest_queued_by_client

if TYPE_CHECKING:
    from broker.core.engine import Engine

Snapshot = dict[str, Any]


def _age(received_at: float | None, now: float) -> float | None:
    return None if received_at is None else round(max(0.0, now - received_at), 3)


def _oldest_overall(sessions: list[dict[str, Any]]) -> float | None:
    """The largest age; unknown (None) if a session with queued messages has an unknown one."""
    ages = [s["oldest_queued_age"] for s in sessions if s["queued_messages"]]
    if not ages or None in ages:
        return None
    return max(ages)


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
        "oldest_queued_age": _oldest_overall(sessions),
        "sessions": sessions,
    }


async def snapshot_from_engine(engine: Engine, db_path: str | None) -> Snapshot:
    """What the running broker holds (called on its event loop, by the control socket).

    Arrival times: the entries a session holds in RAM, and for queues mirrored to storage
    (offline sessions keep theirs there only) what the storage reports (unknown while it is
    out of space, as its reads wait for the commit that cannot be written).
    """
    # While out of space a read would wait for the commit: stored queues' ages are then unknown.
    stored = {} if engine.storage.full else await engine.storage.oldest_queued()
    now = time.time()
    sessions = []
    for session in list(engine.sessions.values()):
        inflight = len(session.inflight)
        times: list[float | None] = [e.message.received_at for e in session.pending]
        times += [e.message.received_at for e in session.inflight.values()]
        if session.client_id in stored:
            times.append(stored[session.client_id])
        sessions.append({
            "client_id": session.client_id,
            "connected": session.connection is not None,
            "persistent": session.persistent,
            # Not acknowledged yet: waiting to be sent, plus sent and awaiting PUBACK/PUBCOMP.
            "queued_messages": session.queued_count + inflight,
            "queued_bytes": session.queued_bytes + sum(len(e.message.payload) for e in session.inflight.values()),
            "inflight_messages": inflight,
            "subscriptions": len(session.subscriptions),
            "oldest_queued_age": _age(oldest_received(times), now) if times else None,
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
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        # A database of schema 2 (read-only: not migrated here) has no arrival times: unknown.
        oldest = oldest_queued_by_client(db.execute(OLDEST_QUEUED).fetchall()) if "received_at" in columns else {}
    finally:
        db.close()
    now = time.time()
    sessions = [
        {"client_id": client_id, "connected": False, "persistent": True, "queued_messages": count,
         "queued_bytes": size, "inflight_messages": sent, "subscriptions": subs,
         "oldest_queued_age": _age(oldest.get(client_id), now)}
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


def _render_age(age: float | None, queued: int) -> str:
    """Seconds as "42s", "3m05s", "2h01m", "4d03h"; "-" when nothing is queued."""
    if not queued:
        return "-"
    if age is None:
        return "unknown"
    seconds = int(age)
    for unit, size, sub_unit, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{seconds % size // sub_size:02d}{sub_unit}"
    return f"{seconds}s"


def render(snapshot: Snapshot) -> str:
    lines = [
        f"source:            {snapshot['source']}",
        f"database:          {snapshot['database']} ({_human_size(snapshot['database_bytes'])} with its WAL)",
        f"retained messages: {snapshot['retained_messages']}",
        f"sessions:          {snapshot['sessions_total']}",
        f"queued:            {snapshot['queued_messages']} messages, {_human_size(snapshot['queued_bytes'])}",
        f"oldest queued:     {_render_age(snapshot['oldest_queued_age'], snapshot['queued_messages'])}",
    ]
    sessions = snapshot["sessions"]
    if sessions:
        width = max(9, *(len(s["client_id"]) for s in sessions))
        lines.append("")
        lines.append(
            f"{'client id':<{width}}  {'state':<12}  {'queued':>8}  {'bytes':>10}  {'inflight':>8}  {'oldest':>8}  subs"
        )
        for s in sessions:
            state = "connected" if s["connected"] else "disconnected"
            lines.append(
                f"{s['client_id']:<{width}}  {state:<12}  {s['queued_messages']:>8}  {s['queued_bytes']:>10}"
                f"  {s['inflight_messages']:>8}  {_render_age(s['oldest_queued_age'], s['queued_messages']):>8}"
                f"  {s['subscriptions']}"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m broker inspect",
        description="Show sessions (queued messages and bytes, in-flight, age of the oldest queued message,"
        " subscriptions), retained messages"
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
