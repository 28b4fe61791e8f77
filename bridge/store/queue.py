"""The SQL of intake and the job queue. Each function takes the writer's connection and runs
inside its transaction (``bridge.store.writer``, or ``bridge.store.pgwriter`` on PostgreSQL); none
commits by itself. The same SQL runs on both databases (``bridge.store.pgdb``): on SQLite one
writer serialises everything; on PostgreSQL, where several bridges write at once, the functions
that change a contact's head hold its advisory lock (``lock_keys``)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable

from bridge.store.pgdb import dialect, lock, translate, try_lock, wake

# Jobs a run can do together: their effects are merged by the planner (bridge.core.plan), so an
# add among them keeps its create and welcome mail. A delete ends the run's reach.
COALESCABLE = ("add", "update", "update_tags")


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
    # Every merged job's payload, oldest first (the planner merges their effects).
    merged_payloads: list[dict[str, Any]] = field(default_factory=list)
    # The instance that claimed this run and the attempt it is: together they fence its writes.
    owner: str = ""
    # Since when the job has been tried (arrival or requeue): the retry budget is counted from here.
    budget_from: float = 0.0

    @property
    def newest_payload(self) -> dict[str, Any]:
        """The newest delivery this run covers (coalesced jobs carry newer data than the head)."""
        return self.latest_payload or self.payload

    @property
    def effective_action(self) -> str:
        """The action covering this job and its merged ones: an add beats an update, which beats tags only."""
        actions = [self.action, *self.merged_actions]
        for action in ("add", "update"):
            if action in actions and self.action in COALESCABLE:
                return action
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
    waiting_only: bool = False,
) -> tuple[int, bool]:
    """Insert a job unless it repeats a delivery already taken: (job_id, duplicate).

    A repeat is a delivery with the same ``dedupe_key`` within ``window_s``. With ``waiting_only``
    (the key is a hash of what was sent, not a sender's event ID) it is a duplicate only while the
    first job still waits (queued, never claimed); once that job has run, the same bytes are new
    work: WP Fusion-style senders send the same URL and body for every change of a contact.
    """
    lock(conn, _enqueue_locks(now, dedupe_key, window_s, connection, action, contact_key))
    if dialect(conn) == "postgresql":
        return _enqueue_pg(conn, now, dedupe_key, window_s, connection, action, contact_key, payload,
                           waiting_only)
    row = conn.execute(
        "SELECT d.job_id, d.received_at, j.status, j.attempts FROM deliveries AS d"
        " LEFT JOIN jobs AS j ON j.id = d.job_id WHERE d.dedupe_key = ?",
        (dedupe_key,),
    ).fetchone()
    if row is not None and row[1] >= now - window_s:
        if not waiting_only or (row[2] == "queued" and row[3] == 0):
            return row[0], True
    # The first active job of its contact is the contact's head: the one that may run next.
    busy = conn.execute(
        "SELECT 1 FROM jobs INDEXED BY jobs_active WHERE contact_key = ? AND status IN ('queued', 'running')"
        " LIMIT 1",
        (contact_key,),
    ).fetchone()
    (job_id,) = conn.execute(
        "INSERT INTO jobs (connection, action, contact_key, payload, run_at, head, budget_from, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (connection, action, contact_key, payload, now, 0 if busy else 1, now, now, now),
    ).fetchone()
    conn.execute(
        "INSERT INTO deliveries (dedupe_key, job_id, received_at) VALUES (?, ?, ?)"
        " ON CONFLICT (dedupe_key) DO UPDATE SET job_id = excluded.job_id,"
        " received_at = excluded.received_at",
        (dedupe_key, job_id, now),
    )
    if not busy:
        wake(conn)
    return job_id, False


# enqueue above as one statement, for PostgreSQL, where each statement is a round trip to the server:
# the same reads (a repeat within the window; whether the contact already has an active job, which
# makes the new job its head or not) and the same two inserts.
_ENQUEUE_PG = """
WITH prior AS (
    SELECT d.job_id FROM deliveries AS d LEFT JOIN jobs AS j ON j.id = d.job_id
    WHERE d.dedupe_key = ? AND d.received_at >= ? AND (NOT ? OR (j.status = 'queued' AND j.attempts = 0))
), busy AS (
    SELECT 1 FROM jobs WHERE contact_key = ? AND status IN ('queued', 'running') LIMIT 1
), job AS (
    INSERT INTO jobs (connection, action, contact_key, payload, run_at, head, budget_from, created_at,
                      updated_at)
    SELECT ?, ?, ?, ?, ?, CASE WHEN EXISTS (SELECT 1 FROM busy) THEN 0 ELSE 1 END, ?, ?, ?
    WHERE NOT EXISTS (SELECT 1 FROM prior)
    RETURNING id, head
), kept AS (
    INSERT INTO deliveries (dedupe_key, job_id, received_at) SELECT ?, id, ? FROM job
    ON CONFLICT (dedupe_key) DO UPDATE SET job_id = excluded.job_id, received_at = excluded.received_at
)
SELECT (SELECT job_id FROM prior), (SELECT id FROM job), (SELECT head FROM job)
"""


def _enqueue_pg(conn: Any, now: float, dedupe_key: str, window_s: float, connection: str, action: str,
                contact_key: str, payload: str, waiting_only: bool) -> tuple[int, bool]:
    """``enqueue`` on PostgreSQL (its locks already held), in one round trip: (job_id, duplicate)."""
    prior, job_id, head = conn.execute(_ENQUEUE_PG, (
        dedupe_key, now - window_s, bool(waiting_only), contact_key, connection, action, contact_key, payload,
        now, now, now, now, dedupe_key, now)).fetchone()
    if prior is not None:
        return prior, True
    if head:
        wake(conn)
    return job_id, False


def enqueue_many(conn: Any, calls: list[tuple]) -> list[tuple[int, bool]]:
    """``enqueue`` for each argument tuple, in order, as one batch: on PostgreSQL the statements go
    in one pipeline (one round trip for all; each still sees the ones before it, so a contact's
    second job is not its head), elsewhere one by one. The callers hold the locks (``lock_keys``)."""
    if dialect(conn) != "postgresql" or len(calls) < 2:
        return [enqueue(conn, *args) for args in calls]
    params = []
    for now, dedupe_key, window_s, connection, action, contact_key, payload, *rest in calls:
        waiting_only = bool(rest[0]) if rest else False
        params.append((dedupe_key, now - window_s, waiting_only, contact_key, connection, action, contact_key,
                       payload, now, now, now, now, dedupe_key, now))
    cur = conn.raw.cursor()
    cur.executemany(translate(_ENQUEUE_PG), params, returning=True)
    out = []
    while True:
        prior, job_id, head = cur.fetchone()
        if prior is None and head:
            wake(conn)
        out.append((prior, True) if prior is not None else (job_id, False))
        if not cur.nextset():
            break
    return out


def _enqueue_locks(now: float, dedupe_key: str, window_s: float, connection: str, action: str,
                   contact_key: str, *_: Any) -> list[str]:
    # The contact (its head) and the dedupe key (two bridges taking one delivery at once).
    return [contact_key, "dedupe:" + dedupe_key]


def _job_locks(now: float, job: "Job", *_: Any) -> list[str]:
    return [job.contact_key]


def lock_keys(fn: Callable[..., Any], args: tuple) -> list[str]:
    """The advisory locks a call of ``fn(conn, *args)`` declares (``fn.lock_keys``, set beside the
    function): the PostgreSQL writer takes those of a whole batch first, in one sorted order, so
    that two bridges' batches never deadlock (``bridge.store.pgdb.lock``)."""
    keys_of = getattr(fn, "lock_keys", None)
    return keys_of(*args) if keys_of is not None else []


enqueue.lock_keys = _enqueue_locks  # type: ignore[attr-defined]
enqueue.answers_sender = True  # type: ignore[attr-defined]  (writer.answer_first)


def reject(conn: sqlite3.Connection, now: float, connection: str | None, status: int, reason: str,
           method: str, query: dict[str, str], content_type: str | None, body: bytes,
           auth: dict[str, Any] | None = None) -> int:
    """Keep an authenticated delivery that could not be accepted, raw, for inspection and replay;
    ``auth`` records how it was authenticated (key scope, signature headers)."""
    return conn.execute(
        "INSERT INTO rejected (received_at, connection, status, reason, method, query, content_type,"
        " body, auth)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (now, connection, status, reason, method, json.dumps(query), content_type, body,
         json.dumps(auth) if auth is not None else None),
    ).fetchone()[0]


def rejected_delivery(conn: sqlite3.Connection, rejected_id: int) -> sqlite3.Row | None:
    """One kept rejected delivery (for replay), or None."""
    return conn.execute("SELECT * FROM rejected WHERE id = ?", (rejected_id,)).fetchone()


def mark_replayed(conn: sqlite3.Connection, rejected_id: int, job_id: int) -> None:
    """Record that a rejected delivery was queued again as ``job_id``."""
    conn.execute("UPDATE rejected SET replayed_job = ? WHERE id = ?", (job_id, rejected_id))


def keep_sample(conn: sqlite3.Connection, now: float, connection: str, body: str, keep: int) -> None:
    """Store a (masked) delivery body for field discovery, keeping the last ``keep`` per connection."""
    conn.execute("INSERT INTO samples (connection, received_at, body) VALUES (?, ?, ?)",
                 (connection, now, body))
    conn.execute(
        "DELETE FROM samples WHERE connection = ? AND id NOT IN"
        " (SELECT id FROM samples WHERE connection = ? ORDER BY id DESC LIMIT ?)",
        (connection, connection, keep),
    )


def release_running(conn: sqlite3.Connection, now: float) -> int:
    """Put every running job back in the queue (at start-up: the lock on the database file proves
    that whoever ran them is gone). Heads stay heads, so each contact keeps its order."""
    return conn.execute(
        "UPDATE jobs SET status = 'queued', owner = NULL, lease_until = NULL, merged_into = NULL,"
        " updated_at = ?"
        " WHERE status = 'running'",
        (now,),
    ).rowcount


def release_orphans(conn: sqlite3.Connection, now: float, owner: str, keep: list[int]) -> int:
    """Put back running jobs of ``owner`` that it does not run (``keep`` holds the ones it does):
    a claim whose answer was lost with the writer process left its jobs running for nobody."""
    rows = conn.execute("SELECT id FROM jobs WHERE status = 'running' AND owner = ?", (owner,)).fetchall()
    kept = set(keep)
    lost = [(now, r[0], owner) for r in rows if r[0] not in kept]
    conn.executemany(
        "UPDATE jobs SET status = 'queued', owner = NULL, lease_until = NULL, merged_into = NULL,"
        " updated_at = ?"
        " WHERE id = ? AND owner = ? AND status = 'running'",
        lost,
    )
    if lost:
        wake(conn)
    return len(lost)


def running_leases(conn: sqlite3.Connection, owner: str) -> list[tuple[int, str, int, int]]:
    """Running jobs held by other instances: (id, owner, attempts, heartbeat)."""
    return [tuple(r) for r in conn.execute(
        "SELECT id, owner, attempts, heartbeat FROM jobs WHERE status = 'running' AND merged_into IS NULL"
        " AND owner IS NOT ? ORDER BY id",
        (owner,),
    )]


def expire_lease(conn: sqlite3.Connection, now: float, lease: tuple[int, str, int, int]) -> bool:
    """Put back a peer's running job if its lease is still exactly the one observed (same owner,
    attempt and heartbeat): a heartbeat that moved in the meantime keeps the job where it is."""
    job_id, owner, attempts, heartbeat = lease
    cur = conn.execute(
        "UPDATE jobs SET status = 'queued', owner = NULL, lease_until = NULL, updated_at = ?"
        " WHERE id = ? AND owner IS ? AND attempts = ? AND heartbeat = ? AND status = 'running'",
        (now, job_id, owner, attempts, heartbeat),
    )
    if cur.rowcount:
        conn.execute(
            "UPDATE jobs SET status = 'queued', owner = NULL, lease_until = NULL, merged_into = NULL,"
            " updated_at = ? WHERE merged_into = ? AND status = 'running'",
            (now, job_id),
        )
        wake(conn)
    return cur.rowcount == 1


def _row_job(row: sqlite3.Row, merged: list[tuple[int, str, str]], owner: str) -> Job:
    return Job(
        id=row["id"], connection=row["connection"], action=row["action"], contact_key=row["contact_key"],
        payload=json.loads(row["payload"]), attempts=row["attempts"] + 1, stage=row["stage"],
        secret=row["secret"],
        merged=[m[0] for m in merged], merged_actions=[m[1] for m in merged],
        latest_payload=json.loads(merged[-1][2]) if merged else None,
        merged_payloads=[json.loads(m[2]) for m in merged], owner=owner,
        budget_from=row["budget_from"] if row["budget_from"] is not None else row["created_at"],
    )


def claim(conn: sqlite3.Connection, now: float, owner: str, limit: int, lease_s: float,
          keep: list[int] | None = None) -> list[Job]:
    """Take up to ``limit`` due jobs for ``owner``, at most one per contact, each its contact's head.

    Only a contact's head (its oldest queued or running job, kept in ``jobs.head``) may run, so
    per-contact order holds even across retries; claiming is one probe of the partial index of due
    heads, whatever the length of the queue. Waiting add/update/update_tags jobs right behind a
    claimed one are claimed with it and done by the same run (coalescing), unless the claimed job
    resumes at its write-back. ``keep``, when given, are
    the jobs the owner runs: any other running job of it is put back first (``release_orphans``).
    """
    if keep is not None:
        release_orphans(conn, now, owner, keep)
    # On PostgreSQL, a head another bridge is claiming is skipped, and so is a contact whose lock
    # another transaction holds (a requeue or an enqueue changing its head right now).
    skip_locked = " FOR UPDATE SKIP LOCKED" if dialect(conn) == "postgresql" else ""
    rows = conn.execute(
        "SELECT * FROM jobs INDEXED BY jobs_due_heads WHERE head = 1 AND status = 'queued' AND run_at <= ?"
        " ORDER BY run_at, id LIMIT ?" + skip_locked,
        (now, limit),
    ).fetchall()
    free = try_lock(conn, [row["contact_key"] for row in rows])
    rows = [row for row in rows if row["contact_key"] in free]
    jobs = []
    lease_until = now + lease_s
    for row in rows:
        merged: list[tuple[int, str, str]] = []
        # Never merge into a run that resumes at its write-back: its upsert is done, so merged
        # jobs would be marked done unapplied; they run after it, in order.
        if row["action"] in COALESCABLE and row["stage"] is None:
            for later in conn.execute(
                "SELECT id, action, payload, status FROM jobs INDEXED BY jobs_active WHERE contact_key = ?"
                " AND status IN ('queued', 'running') AND id > ? ORDER BY id",
                (row["contact_key"], row["id"]),
            ):
                if later["action"] not in COALESCABLE or later["status"] != "queued":
                    break
                merged.append((later["id"], later["action"], later["payload"]))
        conn.execute(
            "UPDATE jobs SET status = 'running', owner = ?, attempts = attempts + 1, heartbeat = 0,"
            " lease_until = ?, updated_at = ? WHERE id = ?",
            (owner, lease_until, now, row["id"]),
        )
        if merged:
            conn.executemany(
                "UPDATE jobs SET status = 'running', owner = ?, lease_until = ?, merged_into = ?,"
                " updated_at = ?"
                " WHERE id = ?",
                [(owner, lease_until, row["id"], now, mid) for mid, _, _ in merged],
            )
        jobs.append(_row_job(row, merged, owner))
    return jobs


def renew(conn: sqlite3.Connection, now: float, owner: str, job_ids: list[int], lease_s: float) -> None:
    """Extend the leases of ``owner``'s running jobs and bump their heartbeat (what a peer watches)."""
    conn.executemany(
        "UPDATE jobs SET lease_until = ?, heartbeat = heartbeat + 1"
        " WHERE id = ? AND owner = ? AND status = 'running'",
        [(now + lease_s, i, owner) for i in job_ids],
    )


_FENCE = " WHERE id = ? AND owner = ? AND attempts = ? AND status = 'running'"


def save_stage(conn: sqlite3.Connection, now: float, job: Job, stage: str | None, secret: str | None) -> bool:
    """Record a job's progress so a repeated run resumes after the steps already done. Fenced: only
    the current attempt of the current owner changes the row; False when this run was fenced out."""
    cur = conn.execute("UPDATE jobs SET stage = ?, secret = ?, updated_at = ?" + _FENCE,
                       (stage, secret, now, job.id, job.owner, job.attempts))
    return cur.rowcount == 1


def finish(conn: sqlite3.Connection, now: float, job: Job, outcome: dict[str, Any]) -> bool:
    """Mark a job done (and its merged jobs, recorded as coalesced into it); erase any secret; the
    contact's next job becomes its head. Fenced (see ``save_stage``): False when fenced out."""
    lock(conn, _job_locks(now, job))
    cur = conn.execute(
        "UPDATE jobs SET status = 'done', head = 0, owner = NULL, outcome = ?, secret = NULL,"
        " lease_until = NULL,"
        " last_error = NULL, updated_at = ?" + _FENCE,
        (json.dumps(outcome), now, job.id, job.owner, job.attempts),
    )
    if cur.rowcount != 1:
        return False
    if job.merged:
        merged_outcome = json.dumps({**outcome, "coalesced_into": job.id})
        conn.executemany(
            "UPDATE jobs SET status = 'done', owner = NULL, outcome = ?, lease_until = NULL, updated_at = ?"
            " WHERE id = ? AND merged_into = ? AND status = 'running'",
            [(merged_outcome, now, mid, job.id) for mid in job.merged],
        )
    _advance(conn, _line_of(conn, job))
    return True


finish.lock_keys = _job_locks  # type: ignore[attr-defined]


def retry_later(conn: sqlite3.Connection, now: float, job: Job, run_at: float, error: str) -> bool:
    """Put a job back in the queue for ``run_at`` (still its contact's head); merged jobs go back
    to waiting behind it. Fenced (see ``save_stage``): False when fenced out."""
    cur = conn.execute(
        "UPDATE jobs SET status = 'queued', owner = NULL, run_at = ?, last_error = ?, lease_until = NULL,"
        " updated_at = ?" + _FENCE,
        (run_at, error, now, job.id, job.owner, job.attempts),
    )
    if cur.rowcount != 1:
        return False
    _remember(conn, now, job.id, "retry", job.attempts, error)
    _release_merged(conn, now, job)
    return True


def bury(conn: sqlite3.Connection, now: float, job: Job, error: str) -> bool:
    """Move a job to the dead-letter state with the reason; erase any secret; the contact's next job
    becomes its head. Fenced (see ``save_stage``): False when fenced out."""
    lock(conn, _job_locks(now, job))
    cur = conn.execute(
        "UPDATE jobs SET status = 'dead', head = 0, owner = NULL, last_error = ?, secret = NULL,"
        " lease_until = NULL, updated_at = ?" + _FENCE,
        (error, now, job.id, job.owner, job.attempts),
    )
    if cur.rowcount != 1:
        return False
    _remember(conn, now, job.id, "dead", job.attempts, error)
    _release_merged(conn, now, job)
    _advance(conn, _line_of(conn, job))
    return True


bury.lock_keys = _job_locks  # type: ignore[attr-defined]


def _remember(conn: sqlite3.Connection, now: float, job_id: int, event: str, attempt: int,
              error: str | None) -> None:
    """Append to the job's history (migration 0005), which a requeue keeps."""
    conn.execute("INSERT INTO job_history (job_id, at, event, attempt, error) VALUES (?, ?, ?, ?, ?)",
                 (job_id, now, event, attempt, error))


def _release_merged(conn: sqlite3.Connection, now: float, job: Job) -> None:
    if job.merged:
        conn.executemany(
            "UPDATE jobs SET status = 'queued', owner = NULL, merged_into = NULL, lease_until = NULL,"
            " updated_at = ? WHERE id = ? AND merged_into = ? AND status = 'running'",
            [(now, mid, job.id) for mid in job.merged],
        )


def _advance(conn: sqlite3.Connection, contact_key: str) -> None:
    """The contact's head left the active set: its oldest active job (if any) becomes the head."""
    wake(conn)
    conn.execute(
        "UPDATE jobs SET head = 1 WHERE id = (SELECT id FROM jobs INDEXED BY jobs_active"
        " WHERE contact_key = ?"
        " AND status IN ('queued', 'running') ORDER BY id LIMIT 1)",
        (contact_key,),
    )


def prune(conn: sqlite3.Connection, now: float, retention_s: float,
          dedupe_window_s: float) -> tuple[int, int]:
    """Delete done jobs older than the retention and expired dedupe keys: (jobs, keys) removed."""
    jobs = conn.execute("DELETE FROM jobs WHERE status = 'done' AND updated_at < ?",
                        (now - retention_s,)).rowcount
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
    row = conn.execute("SELECT id FROM rejected ORDER BY id DESC LIMIT 1 OFFSET ?",
                       (rejected_max,)).fetchone()
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
    row = conn.execute(
        "SELECT MIN(run_at) FROM jobs INDEXED BY jobs_due_heads WHERE head = 1 AND status = 'queued'"
    ).fetchone()
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
    """Give a dead job a fresh start (after the operator fixed the cause), with a fresh retry budget;
    its failure history is kept. It goes back in its contact's line where its ID puts it: the head,
    unless a job of the contact runs right now (then it becomes the head when that one ends)."""
    row = conn.execute("SELECT contact_key, attempts FROM jobs WHERE id = ? AND status = 'dead'",
                       (job_id,)).fetchone()
    if row is None:
        return False
    lock(conn, [row[0]])
    active = conn.execute(
        "SELECT id, status FROM jobs INDEXED BY jobs_active WHERE contact_key = ?"
        " AND status IN ('queued', 'running') AND head = 1",
        (row[0],),
    ).fetchone()
    running = active is not None and active[1] == "running"
    if active is not None and not running and active[0] > job_id:
        conn.execute("UPDATE jobs SET head = 0 WHERE id = ?", (active[0],))
    head = 0 if running or (active is not None and active[0] < job_id) else 1
    conn.execute(
        "UPDATE jobs SET status = 'queued', head = ?, attempts = 0, run_at = ?, budget_from = ?,"
        " updated_at = ?"
        " WHERE id = ?",
        (head, now, now, now, job_id),
    )
    _remember(conn, now, job_id, "requeued", row[1], None)
    wake(conn)
    return True


def ping(conn: sqlite3.Connection) -> bool:
    """A read that touches the file (readiness): raises when the database cannot be read."""
    conn.execute("SELECT version FROM schema_version LIMIT 1").fetchone()
    return True


def _line_of(conn: sqlite3.Connection, job: Job) -> str:
    """The key of the line the job is in now, its lock held: a link learned while the job ran may
    have moved it to its contact's ID key (``bridge.store.aliases``)."""
    row = conn.execute("SELECT contact_key FROM jobs WHERE id = ?", (job.id,)).fetchone()
    key = row[0] if row is not None else job.contact_key
    if key != job.contact_key:
        lock(conn, [key])
    return key
