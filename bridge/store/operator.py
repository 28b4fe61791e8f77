"""The database as operator commands see it: an existing file, opened read-only for reading
commands, never created and never migrated (only ``serve`` does that, as the service user).

The SQL of the operator's views (filtered job lists, a contact's history, bulk requeue, the
rejected deliveries, the online backup) lives here too (STYLE.md §15: SQL in ``store/`` only).

A command run as root must not leave root-owned files the service then cannot open: SQLite
creates ``-wal``/``-shm`` beside the database even for a read-only connection, so any such file
this process created is given back to the database file's owner when the connection closes.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from bridge.errors import BridgeError
from bridge.store import pgdb
from bridge.store.db import SchemaTooNew, migrations

SIDECARS = ("-wal", "-shm")


class DatabaseMissing(BridgeError):
    """There is no database at ``database.path`` (operator commands never create one)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"database.path: no database at {path}; start the bridge once (`wp-sync-bridge serve`, as the "
            "service user) to create it, or correct database.path"
        )
        self.path = path


class SchemaTooOld(BridgeError):
    """The database predates this bridge's migrations; only ``serve`` migrates it."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"database schema version {found} is older than this bridge's ({known}): restart the service "
            "(`serve` migrates it, after a backup: `wp-sync-bridge backup PATH`), then run this again"
        )
        self.found = found
        self.known = known


def latest_version(backend: str = "sqlite") -> int:
    """The newest migration this bridge knows for ``backend`` (each has its own numbering)."""
    known = pgdb.migrations() if backend == "postgresql" else migrations()
    return known[-1][0] if known else 0


def read_version(conn: sqlite3.Connection) -> int:
    """The database's schema version without creating anything (0 when it has none)."""
    if pgdb.dialect(conn) == "postgresql":
        return pgdb.read_version(conn)
    exists = conn.execute("SELECT 1 FROM sqlite_master"
                          " WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if not exists:
        return 0
    return conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0


def _give_back(path: Path, before: set[str]) -> None:
    """Hand ``-wal``/``-shm`` files this process created to the database file's owner (when root)."""
    if os.geteuid() != 0:
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    for suffix in SIDECARS:
        side = Path(f"{path}{suffix}")
        if suffix not in before and side.exists() and side.stat().st_uid != st.st_uid:
            os.chown(side, st.st_uid, st.st_gid)


@contextmanager
def open_existing(path: Path | str, *, write: bool = False,
                  need_latest: bool = True) -> Iterator[sqlite3.Connection]:
    """A connection to an existing database: read-only unless ``write``; never creates the file or
    migrates it. Raises DatabaseMissing, SchemaTooNew, or SchemaTooOld (``write`` or ``need_latest``)."""
    path = Path(path)
    if not path.is_file():
        raise DatabaseMissing(path)
    before = {s for s in SIDECARS if Path(f"{path}{s}").exists()}
    mode = "rw" if write else "ro"
    conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, isolation_level=None,
                           check_same_thread=False, timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        if write:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        _check_version(read_version(conn), latest_version(), write or need_latest)
        yield conn
    finally:
        conn.close()
        _give_back(path, before)


def _check_version(version: int, known: int, need_latest: bool) -> None:
    if version > known:
        raise SchemaTooNew(version, known)
    if version < known and need_latest:
        raise SchemaTooOld(version, known)


class NotABridgeDatabase(BridgeError):
    """The PostgreSQL database has no wp-sync-bridge schema (operator commands never create one)."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"database.url: {where} holds no wp-sync-bridge queue yet; start the bridge once "
            "(`wp-sync-bridge serve` migrates it), or correct database.url"
        )


@contextmanager
def open_existing_url(url: str, *, write: bool = False, need_latest: bool = True) -> Iterator[Any]:
    """A connection to an existing PostgreSQL queue: read-only unless ``write``; never migrates.
    Raises PostgresUnavailable, NotABridgeDatabase, SchemaTooNew, or SchemaTooOld."""
    conn = pgdb.connect(url, read_only=not write, application_name="wp-sync-bridge cli")
    try:
        version = pgdb.read_version(conn)
        if version == 0:
            raise NotABridgeDatabase(pgdb.shown_url(url))
        _check_version(version, latest_version("postgresql"), write or need_latest)
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed, or rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _job(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["has_secret"] = out.pop("secret", None) is not None
    out["payload"] = json.loads(out["payload"])
    out["outcome"] = json.loads(out["outcome"]) if out.get("outcome") else None
    return out


def _filters(status: str | None, connection: str | None, contact: str | None,
             since: float | None, postgres: bool = False) -> tuple[str, list[Any]]:
    where, args = [], []
    if status:
        where.append("status = ?")
        args.append(status)
    if connection:
        where.append("connection = ?")
        args.append(connection)
    if contact:
        # contact_key is CONNECTION:id:ID or CONNECTION:email:EMAIL (lower-cased); the email is
        # also in the payload when the key is the CRM's ID.
        email = "payload::json->>'email'" if postgres else "json_extract(payload, '$.email')"
        where.append("(contact_key LIKE ? ESCAPE '\\' OR contact_key LIKE ? ESCAPE '\\'"
                     f" OR lower({email}) = ?)")
        esc = contact.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        args += [f"%:id:{esc}", f"%:email:{esc.lower()}", contact.lower()]
    if since is not None:
        where.append("created_at >= ?")
        args.append(since)
    return (" WHERE " + " AND ".join(where)) if where else "", args


def find_jobs(conn: sqlite3.Connection, *, status: str | None = None, connection: str | None = None,
              contact: str | None = None, since: float | None = None, limit: int | None = 20,
              oldest_first: bool = False) -> list[dict[str, Any]]:
    """Jobs matching every given filter (``contact`` is an email or a CRM contact ID), without secrets."""
    where, args = _filters(status, connection, contact, since, pgdb.dialect(conn) == "postgresql")
    sql = f"SELECT * FROM jobs{where} ORDER BY id {'ASC' if oldest_first else 'DESC'}"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [_job(r) for r in conn.execute(sql, args).fetchall()]


def job_ids(conn: sqlite3.Connection, *, status: str, connection: str | None,
            since: float | None) -> list[int]:
    """IDs of the jobs a bulk command acts on, oldest first."""
    where, args = _filters(status, connection, None, since)
    return [r[0] for r in conn.execute(f"SELECT id FROM jobs{where} ORDER BY id", args)]


def history(conn: sqlite3.Connection, job_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The recorded failures and requeues of each job, oldest first (empty before migration 0005)."""
    if not job_ids or not _has_table(conn, "job_history"):
        return {}
    out: dict[int, list[dict[str, Any]]] = {}
    marks = ",".join("?" * len(job_ids))
    for row in conn.execute(f"SELECT * FROM job_history WHERE job_id IN ({marks}) ORDER BY id", job_ids):
        out.setdefault(row["job_id"], []).append({k: row[k] for k in ("at", "event", "attempt", "error")})
    return out


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    if pgdb.dialect(conn) == "postgresql":
        return conn.execute("SELECT to_regclass(?)", (name,)).fetchone()[0] is not None
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def samples(conn: sqlite3.Connection, connection: str) -> list[str]:
    """The kept (masked) delivery bodies of a connection, newest first, for ``discover``."""
    rows = conn.execute("SELECT body FROM samples WHERE connection = ? ORDER BY id DESC", (connection,))
    return [row[0] for row in rows]


def oldest_queued_at(conn: sqlite3.Connection) -> float | None:
    """Creation time of the oldest queued job (for the metrics), None when nothing waits."""
    return conn.execute("SELECT MIN(created_at) FROM jobs WHERE status = 'queued'").fetchone()[0]


def rejected(conn: sqlite3.Connection, *, limit: int | None = 20,
             pending_only: bool = False) -> list[sqlite3.Row]:
    """Rejected deliveries, newest first; ``pending_only`` leaves out those already replayed."""
    sql = "SELECT id, received_at, connection, status, reason, replayed_job FROM rejected"
    if pending_only:
        sql += " WHERE replayed_job IS NULL"
    sql += " ORDER BY id DESC"
    args: list[Any] = []
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return conn.execute(sql, args).fetchall()


def backup(conn: sqlite3.Connection, target: Path,
           progress: Callable[[int, int], None] | None = None) -> None:
    """Copy the database to ``target`` with SQLite's online backup API (consistent while the daemon
    writes); ``progress(done_pages, total_pages)`` is called along the way."""
    dest = sqlite3.connect(str(target))
    try:
        def step(status: int, remaining: int, total: int) -> None:
            if progress is not None:
                progress(total - remaining, total)

        conn.backup(dest, pages=256, progress=step)
    finally:
        dest.close()


def webhook(conn: sqlite3.Connection, connection: str) -> sqlite3.Row | None:
    """The webhook subscription the bridge created in a connection's CRM, if any."""
    return conn.execute("SELECT * FROM webhooks WHERE connection = ?", (connection,)).fetchone()


def keep_webhook(conn: sqlite3.Connection, connection: str, remote_id: str, url: str, now: float) -> None:
    """Store (or replace) a connection's subscription: the CRM's ID for it and the URL without its key."""
    conn.execute("INSERT INTO webhooks (connection, remote_id, url, created_at) VALUES (?, ?, ?, ?)"
                 " ON CONFLICT (connection) DO UPDATE SET remote_id = excluded.remote_id, url = excluded.url,"
                 " created_at = excluded.created_at", (connection, remote_id, url, now))


def forget_webhook(conn: sqlite3.Connection, connection: str) -> None:
    """Forget a connection's subscription (deleted in the CRM)."""
    conn.execute("DELETE FROM webhooks WHERE connection = ?", (connection,))
