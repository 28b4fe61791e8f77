"""Replaying a rejected delivery once the mapping or configuration is fixed."""

from __future__ import annotations

import json
import sqlite3

from bridge.core.auth import SIGNATURE_HEADERS, verify_signature
from bridge.core.contacts import links_from_deliveries
from bridge.core.delivery import dedupe_key, parse_delivery
from bridge.errors import BadDelivery
from bridge.settings import Settings
from bridge.store import aliases
from bridge.store import queue as q


def replay_rejected(conn: sqlite3.Connection, settings: Settings, rejected_id: int,
                    now: float) -> tuple[bool, str]:
    """Parse a kept delivery again with the current settings and queue it: (ok, message).

    Runs inside the caller's transaction."""
    row = q.rejected_delivery(conn, rejected_id)
    if row is None:
        return False, "no such rejected delivery"
    if row["replayed_job"]:
        return False, f"already replayed as job {row['replayed_job']}"
    auth = json.loads(row["auth"]) if row["auth"] else {"scope": "global"}  # rows from before scoped keys
    if auth.get("scope") == "connection" and not row["connection"]:
        return False, "refused: authenticated by a connection's key but kept without its connection"
    connection = row["connection"] or settings.default_connection()
    if connection not in settings.connections:
        return False, f"connection {connection!r} is not configured"
    conn_settings = settings.connections[connection]
    query = json.loads(row["query"])
    body = bytes(row["body"])
    try:
        if conn_settings.signing_secrets:
            _check_kept_signature(conn_settings, auth, body)
        delivery = parse_delivery(connection, conn_settings.spec(), query, row["content_type"], body,
                                  conn_settings.overrides_allowed())
    except BadDelivery as err:
        return False, f"still refused: {err.code}: {err.message}"
    if delivery.action == "test":
        return False, "a test delivery has nothing to replay"
    # Under the contact's one key, learning the link it states, as intake does (bridge.store.aliases).
    job_id, duplicate, _ = aliases.enqueue_contact(
        conn, now, dedupe_key(connection, query, body, None), settings.server.dedupe_window_s, connection,
        delivery.action, delivery.contact_id, delivery.email, delivery.payload_json(), False,
        links_from_deliveries(conn_settings.fetch_contact and conn_settings.spec().fetch is not None))
    q.mark_replayed(conn, rejected_id, job_id)
    return True, f"queued as job {job_id}" + (" (duplicate of an earlier delivery)" if duplicate else "")


def _check_kept_signature(conn_settings, auth: dict, body: bytes) -> None:
    """Intake checked this connection's signature: check it again against today's secrets (its age
    is not held against it: the delivery was on time when it arrived). BadDelivery when it fails."""
    headers = auth.get("webhook") or {}
    if not all(headers.get(h) for h in SIGNATURE_HEADERS):
        raise BadDelivery(401, "missing_signature",
                          "the connection checks signatures and this delivery was kept without one")
    stamp = str(headers["webhook-timestamp"])
    now_s = float(stamp) if stamp.isdigit() else 0.0
    verify_signature([s.get_secret_value() for s in conn_settings.signing_secrets], headers, body, now_s)
