"""Moving a bridge's queue from its SQLite file to PostgreSQL (``wp-sync-bridge store copy``).

What moves: the jobs still to do (queued; running ones, whose bridge is stopped, go back to queued)
and the dead ones, each with its ID, attempts, stage and stored password (a write-back resumes where
it stopped), and its failure history; every dedupe key (a sender's retry after the move is still a
duplicate); the webhook subscriptions, the rejected deliveries, the field-discovery samples and the
contact links (an email's deliveries stay in its contact ID's line); and the database's identity
(``instance``), so that the request IDs sent to WordPress stay those of the jobs' first runs. Done
jobs stay behind (history only). The target's ID sequences continue after the source's highest
IDs. The source is read, never changed: it is the way back.

The copy runs in one PostgreSQL transaction: it lands whole or not at all.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable

from bridge.errors import BridgeError
from bridge.store.pgdb import PgConnection

JOB_COLUMNS = ("id", "connection", "action", "contact_key", "payload", "status", "attempts", "run_at",
               "lease_until", "stage", "secret", "last_error", "outcome", "merged_into", "created_at",
               "updated_at", "owner", "heartbeat", "head", "budget_from")
# Tables copied whole: (table, columns).
TABLES = (
    ("deliveries", ("dedupe_key", "job_id", "received_at")),
    ("rejected", ("id", "received_at", "connection", "status", "reason", "method", "query", "content_type",
                  "body", "replayed_job", "auth")),
    ("samples", ("id", "connection", "received_at", "body")),
    ("webhooks", ("connection", "remote_id", "url", "created_at")),
    ("contact_aliases", ("connection", "email", "contact_id", "learned_at")),
)
CHUNK = 500
MOVED = "status IN ('queued', 'running', 'dead')"


class TargetNotEmpty(BridgeError):
    """The PostgreSQL queue already holds jobs: a copy would mix two queues."""


@dataclass
class CopyReport:
    """What a copy moved: rows per table, jobs per status."""

    jobs: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    was_running: int = 0


def jobs_to_move(src: sqlite3.Connection) -> int:
    """How many jobs a copy moves (for the progress bar)."""
    return src.execute(f"SELECT COUNT(*) FROM jobs WHERE {MOVED}").fetchone()[0]


def copy(src: sqlite3.Connection, dst: PgConnection,
         progress: Callable[[int], None] = lambda n: None) -> CopyReport:
    """Copy ``src`` (a SQLite queue, latest schema) into ``dst`` (a migrated, empty PostgreSQL queue)
    in one transaction. Raises TargetNotEmpty."""
    report = CopyReport()
    raw = dst.raw
    with raw.transaction():
        (existing,) = raw.execute("SELECT COUNT(*) FROM jobs").fetchone()
        if existing:
            raise TargetNotEmpty(f"the PostgreSQL queue already holds {existing} job(s); copy into an empty "
                                 "database (or schema)")
        _copy_jobs(src, dst, report, progress)
        _copy_history(src, dst, report)
        for table, columns in TABLES:
            report.rows[table] = _copy_table(src, dst, table, columns)
        (instance,) = src.execute("SELECT id FROM instance").fetchone()
        raw.execute("UPDATE instance SET id = %s", (instance,))
        for table in ("jobs", "rejected", "samples", "job_history"):
            raw.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                        f" GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), %s) + 1, false)",
                        (_max_id(src, table),))
    return report


def _copy_jobs(src: sqlite3.Connection, dst: PgConnection, report: CopyReport,
               progress: Callable[[int], None]) -> None:
    columns = ", ".join(JOB_COLUMNS)
    marks = ", ".join(["%s"] * len(JOB_COLUMNS))
    rows = src.execute(f"SELECT {columns} FROM jobs WHERE {MOVED} ORDER BY id")
    with dst.raw.cursor() as cur:
        while chunk := rows.fetchmany(CHUNK):
            jobs = [dict(zip(JOB_COLUMNS, row)) for row in chunk]
            report.was_running += sum(job["status"] == "running" for job in jobs)
            moved = [_waiting(job) for job in jobs]
            cur.executemany(f"INSERT INTO jobs ({columns}) VALUES ({marks})",
                            [tuple(job[c] for c in JOB_COLUMNS) for job in moved])
            for job in moved:
                report.jobs[job["status"]] = report.jobs.get(job["status"], 0) + 1
            progress(len(chunk))


def _waiting(job: dict[str, Any]) -> dict[str, Any]:
    """A running job of a stopped bridge waits again (its stage and password kept)."""
    if job["status"] == "running":
        job.update(status="queued", owner=None, lease_until=None, merged_into=None, heartbeat=0)
    return job


def _copy_history(src: sqlite3.Connection, dst: PgConnection, report: CopyReport) -> None:
    rows = src.execute("SELECT h.id, h.job_id, h.at, h.event, h.attempt, h.error FROM job_history AS h"
                       f" JOIN jobs AS j ON j.id = h.job_id WHERE j.{MOVED}"
                       " ORDER BY h.id").fetchall()
    if rows:
        dst.raw.cursor().executemany("INSERT INTO job_history (id, job_id, at, event, attempt, error)"
                                     " VALUES (%s, %s, %s, %s, %s, %s)", [tuple(r) for r in rows])
    report.rows["job_history"] = len(rows)


def _copy_table(src: sqlite3.Connection, dst: PgConnection, table: str, columns: tuple[str, ...]) -> int:
    names = ", ".join(columns)
    rows = [tuple(r) for r in src.execute(f"SELECT {names} FROM {table}").fetchall()]
    if rows:
        marks = ", ".join(["%s"] * len(columns))
        dst.raw.cursor().executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
    return len(rows)


def _max_id(src: sqlite3.Connection, table: str) -> int:
    """The highest ID the source ever gave (AUTOINCREMENT remembers deleted ones too)."""
    row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    (current,) = src.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()
    return max(row[0] if row else 0, current)
