"""The SQL of intake and the job queue. Each function takes the writer's connection and runs
inside its transaction (``bridge.store.writer``); none commits by itself."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

COALESCABLE = ("update", "update_tags")


@dataclass
class Job:
    """A claimed job. ``merged`` are later jobs of the same contact done by this run (coalescing)."""

    id: int
    connection: str
    action: str
    contact_key: str
    payload: dict[str, Any]
    attempts: int
    stage: str | None
    secret: str | None
    merged: list[int]
    merged_actions: list[str]
    latest_payload: dict[str, Any] | None = None

    @property
    def newest_payload(self) -> dict[str, Any]:
        """The newest delivery this run covers (coalesced jobs carry newer data than the head)."""
        return self.latest_payload or self.payload

    @property
    def effective_action(self) -> str:
        """The action covering this job and its merged ones: a full update beats tags only."""
        if self.action in COALESCABLE and "update" in self.merged_actions:
            return "update"
        return self.action


def enqueue(
    conn: sqlite3.Connection,
    now: float,
    dedupe_key: str,
    window_s: float,
    connection: str,
    action: str,
    contact_key: str,
    payload: str,
) -> tuple[int, bool]:
    """Insert a job unless the same delivery was seen within the window: (job_id, duplicate)."""
    row = conn.execute("SELECT job_id, received_at FROM deliveries WHERE dedupe_key = ?", (dedupe_key,)).fetchone()
    if row is not None and row[1] >= now - window_s:
        return row[0], True
    cur = conn.execute(
        "INSERT INTO jobs (connection, action, contact_key, payload, run_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (connection, action, contact_key, payload, now, now, now),
    )
    job_id = cur.lastrowid
    conn.execute(
        "INSERT INTO deliveries (dedupe_key, job_id, received_at) VALUES (?, ?, ?)"
        " ON CONFLICT (dedupe_key) DO UPDATE SET job_id = excluded.job_id, received_at = excluded.received_at",
        (dedupe_key, job_id, now),
    )
    return job_id, False


def reject(conn: sqlite3.Connection, now: float, connection: str | None, status: int, reason: str,
           method: str, query: dict[str, str], content_type: str | None, body: bytes,
           auth: dict[str, Any] | None = None) -> int:
    """Keep an authenticated delivery that could not be accepted, raw, for inspection and replay;
    ``auth`` records how it was authenticated (key scope, signature headers)."""
    cur = conn.execute(
        "INSERT INTO rejected (received_at, connection, status, reason, method, query, content_type, body, auth)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (now, connection, status, reason, method, json.dumps(query), content_type, body,
         json.dumps(auth) if auth is not None else None),
    )
    return cur.lastrowid


def keep_sample(conn: sqlite3.Connection, now: float, connection: str, body: str, keep: int) -> None:
    """Store a (masked) delivery body for field discovery, keeping the last ``keep`` per connection."""
    conn.execute("INSERT INTO samples (connection, received_at, body) VALUES (?, ?, ?)", (connection, now, body))
    conn.execute(
        "DELETE FROM samples WHERE connection = ? AND id NOT IN"
        " (SELECT id FROM samples WHERE connection = ? ORDER BY id DESC LIMIT ?)",
        (connection, connection, keep),
    )


def release_running(conn: sqlite3.Connection, now: float, expired_only: bool) -> int:
    """Put running jobs back in the queue: all of them at start-up, else those whose lease expired."""
    sql = "UPDATE jobs SET status = 'queued', lease_until = NULL, merged_into = NULL, updated_at = ? WHERE status = 'running'"
    args: tuple = (now,)
    if expired_only:
        sql += " AND lease_until < ?"
        args = (now, now)
    return conn.execute(sql, args).rowcount


def _row_job(row: sqlite3.Row, merged: list[tuple[int, str, str]]) -> Job:
    return Job(
        id=row["id"], connection=row["connection"], action=row["action"], contact_key=row["contact_key"],
        payload=json.loads(row["payload"]), attempts=row["attempts"], stage=row["stage"], secret=row["secret"],
        merged=[m[0] for m in merged], merged_actions=[m[1] for m in merged],
        latest_payload=json.loads(merged[-1][2]) if merged else None,
    )


def claim(conn: sqlite3.Connection, now: float, limit: int, lease_s: float) -> list[Job]:
    """Take up to ``limit`` runnable jobs, at most one per contact, each the oldest of its contact.

    A job is runnable when it is queued, due, and no earlier job of its contact is queued or
    running (per-contact order, even across retries). Waiting update/update_tags jobs right
    behind a claimed update job are claimed with it and done by the same run (coalescing).
    """
    rows = conn.execute(
        "SELECT * FROM jobs AS j WHERE j.status = 'queued' AND j.run_at <= ?"
        " AND NOT EXISTS (SELECT 1 FROM jobs AS e WHERE e.contact_key = j.contact_key"
        "                 AND e.status IN ('queued', 'running') AND e.id < j.id)"
        " ORDER BY j.id LIMIT ?",
        (now, limit),
    ).fetchall()
    jobs = []
    lease_until = now + lease_s
    for row in rows:
        merged: list[tuple[int, str, str]] = []
        if row["action"] in COALESCABLE:
            for later in conn.execute(
                "SELECT id, action, payload FROM jobs WHERE contact_key = ? AND status = 'queued' AND id > ? ORDER BY id",
                (row["contact_key"], row["id"]),
            ):
                if later["action"] not in COALESCABLE:
                    break
                merged.append((later["id"], later["action"], later["payload"]))
        conn.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_until = ?, updated_at = ? WHERE id = ?",
            (lease_until, now, row["id"]),
        )
        if merged:
            conn.executemany(
                "UPDATE jobs SET status = 'running', lease_until = ?, merged_into = ?, updated_at = ? WHERE id = ?",
                [(lease_until, row["id"], now, mid) for mid, _, _ in merged],
            )
        job = _row_job(row, merged)
        job.attempts += 1
        jobs.append(job)
    return jobs


def renew(conn: sqlite3.Connection, now: float, job_ids: list[int], lease_s: float) -> None:
    """Extend the lease of running jobs."""
    conn.executemany("UPDATE jobs SET lease_until = ? WHERE id = ? AND status = 'running'", [(now + lease_s, i) for i in job_ids])


def save_stage(conn: sqlite3.Connection, now: float, job_id: int, stage: str | None, secret: str | None) -> None:
    """Record a job's progress so a repeated run resumes after the steps already done."""
    conn.execute("UPDATE jobs SET stage = ?, secret = ?, updated_at = ? WHERE id = ?", (stage, secret, now, job_id))


def finish(conn: sqlite3.Connection, now: float, job: Job, outcome: dict[str, Any]) -> None:
    """Mark a job done (and its merged jobs, recorded as coalesced into it); erase any secret."""
    conn.execute(
        "UPDATE jobs SET status = 'done', outcome = ?, secret = NULL, lease_until = NULL, last_error = NULL, updated_at = ? WHERE id = ?",
        (json.dumps(outcome), now, job.id),
    )
    if job.merged:
        merged_outcome = json.dumps({**outcome, "coalesced_into": job.id})
        conn.executemany(
            "UPDATE jobs SET status = 'done', outcome = ?, lease_until = NULL, updated_at = ? WHERE id = ?",
            [(merged_outcome, now, mid) for mid in job.merged],
        )


def retry_later(conn: sqlite3.Connection, now: float, job: Job, run_at: float, error: str) -> None:
    """Put a job back in the queue for ``run_at``; merged jobs go back to waiting behind it."""
    conn.execute(
        "UPDATE jobs SET status = 'queued', run_at = ?, last_error = ?, lease_until = NULL, updated_at = ? WHERE id = ?",
        (run_at, error, now, job.id),
    )
    _remember(conn, now, job.id, "retry", job.attempts, error)
    _release_merged(conn, now, job)


def bury(conn: sqlite3.Connection, now: float, job: Job, error: str) -> None:
    """Move a job to the dead-letter state with the reason; erase any secret."""
    conn.execute(
        "UPDATE jobs SET status = 'dead', last_error = ?, secret = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
        (error, now, job.id),
    )
    _remember(conn, now, job.id, "dead", job.attempts, error)
    _release_merged(conn, now, job)


def _remember(conn: sqlite3.Connection, now: float, job_id: int, event: str, attempt: int, error: str | None) -> None:
    """Append to the job's history (migration 0004), which a requeue keeps."""
    conn.execute("INSERT INTO job_history (job_id, at, event, attempt, error) VALUES (?, ?, ?, ?, ?)",
                 (job_id, now, event, attempt, error))


def _release_merged(conn: sqlite3.Connection, now: float, job: Job) -> None:
    if job.merged:
        conn.executemany(
            "UPDATE jobs SET status = 'queued', merged_into = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
            [(now, mid) for mid in job.merged],
        )


def prune(conn: sqlite3.Connection, now: float, retention_s: float, dedupe_window_s: float) -> tuple[int, int]:
    """Delete done jobs older than the retention and expired dedupe keys: (jobs, keys) removed."""
    jobs = conn.execute("DELETE FROM jobs WHERE status = 'done' AND updated_at < ?", (now - retention_s,)).rowcount
    keys = conn.execute("DELETE FROM deliveries WHERE received_at < ?", (now - dedupe_window_s,)).rowcount
    return jobs, keys


def prune_untrusted(conn: sqlite3.Connection, now: float, dead_retention_s: float, dead_max: int,
                    rejected_retention_s: float, rejected_max: int) -> tuple[int, int]:
    """Bound what senders can grow: delete dead jobs and rejected deliveries past their retention,
    then the oldest beyond their caps (newest kept): (dead jobs, rejected rows) removed."""
    dead = conn.execute("DELETE FROM jobs WHERE status = 'dead' AND updated_at < ?",
                        (now - dead_retention_s,)).rowcount
    (n_dead,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'dead'").fetchone()
    if n_dead > dead_max:
        # The cut-off is the newest of the surplus: every dead job up to it goes.
        (cut,) = conn.execute("SELECT id FROM jobs WHERE status = 'dead' ORDER BY id LIMIT 1 OFFSET ?",
                              (n_dead - dead_max - 1,)).fetchone()
        dead += conn.execute("DELETE FROM jobs WHERE status = 'dead' AND id <= ?", (cut,)).rowcount
    rejected = conn.execute("DELETE FROM rejected WHERE received_at < ?",
                            (now - rejected_retention_s,)).rowcount
    row = conn.execute("SELECT id FROM rejected ORDER BY id DESC LIMIT 1 OFFSET ?", (rejected_max,)).fetchone()
    if row is not None:
        rejected += conn.execute("DELETE FROM rejected WHERE id <= ?", (row[0],)).rowcount
    return dead, rejected


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Number of jobs per status."""
    out = {"queued": 0, "running": 0, "done": 0, "dead": 0}
    for status, n in conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
        out[status] = n
    return out


def next_run_at(conn: sqlite3.Connection) -> float | None:
    """When the next queued job becomes due."""
    row = conn.execute("SELECT MIN(run_at) FROM jobs WHERE status = 'queued'").fetchone()
    return row[0]


def get_job(conn: sqlite3.Connection, job_id: int) -> dict[str, Any] | None:
    """A job as a dict (without its secret), for the CLI and tests."""
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["has_secret"] = out.pop("secret") is not None
    out["payload"] = json.loads(out["payload"])
    out["outcome"] = json.loads(out["outcome"]) if out["outcome"] else None
    return out


def list_jobs(conn: sqlite3.Connection, status: str | None, limit: int) -> list[dict[str, Any]]:
    """Recent jobs, newest first, optionally of one status."""
    if status:
        rows = conn.execute("SELECT id FROM jobs WHERE status = ? ORDER BY id DESC LIMIT ?", (status, limit))
    else:
        rows = conn.execute("SELECT id FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
    return [get_job(conn, r[0]) for r in rows.fetchall()]


def requeue(conn: sqlite3.Connection, now: float, job_id: int) -> bool:
    """Give a dead job a fresh start (after the operator fixed the cause); its history is kept."""
    row = conn.execute("SELECT attempts FROM jobs WHERE id = ? AND status = 'dead'", (job_id,)).fetchone()
    if row is None:
        return False
    conn.execute("UPDATE jobs SET status = 'queued', attempts = 0, run_at = ?, updated_at = ? WHERE id = ?",
                 (now, now, job_id))
    _remember(conn, now, job_id, "requeued", row[0], None)
    return True
