"""Replaying a rejected delivery once the mapping or configuration is fixed."""

from __future__ import annotations

import json
import sqlite3

from bridge.core.delivery import dedupe_key, parse_delivery
from bridge.errors import BadDelivery
from bridge.settings import Settings
from bridge.store import queue as q


def replay_rejected(conn: sqlite3.Connection, settings: Settings, rejected_id: int, now: float) -> tuple[bool, str]:
    """Parse a kept delivery again with the current settings and queue it: (ok, message).

    Runs inside the caller's transaction."""
    row = conn.execute("SELECT * FROM rejected WHERE id = ?", (rejected_id,)).fetchone()
    if row is None:
        return False, "no such rejected delivery"
    if row["replayed_job"]:
        return False, f"already replayed as job {row['replayed_job']}"
    connection = row["connection"] or settings.default_connection()
    if connection not in settings.connections:
        return False, f"connection {connection!r} is not configured"
    query = json.loads(row["query"])
    body = bytes(row["body"])
    try:
        delivery = parse_delivery(connection, settings.connections[connection].spec(), query, row["content_type"], body)
    except BadDelivery as err:
        return False, f"still refused: {err.code}: {err.message}"
    if delivery.action == "test":
        return False, "a test delivery has nothing to replay"
    job_id, duplicate = q.enqueue(conn, now, dedupe_key(connection, query, body, None), settings.server.dedupe_window_s,
                                  connection, delivery.action, delivery.contact_key, delivery.payload_json())
    conn.execute("UPDATE rejected SET replayed_job = ? WHERE id = ?", (job_id, rejected_id))
    return True, f"queued as job {job_id}" + (" (duplicate of an earlier delivery)" if duplicate else "")
