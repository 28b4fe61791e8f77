"""PostgreSQL state (``database.url = "postgresql://..."``): connections, numbered migrations of its
own (``migrations_pg/``), and the adapter that lets the queue's SQL (``bridge.store.queue``,
``bridge.store.operator``) run on either database.

The queue's SQL is written once, in SQLite's placeholder style (``?``), in the subset both
databases read the same way. ``PgConnection`` gives psycopg 3 the face of a ``sqlite3``
connection: ``execute``/``executemany`` translate the placeholders (``?`` → ``%s``, a literal ``%``
doubled), SQLite's index hints (``INDEXED BY``) are dropped (PostgreSQL's planner picks the partial
index itself), ``IS ?`` becomes ``IS NOT DISTINCT FROM``, and rows answer to ``row[0]``,
``row["name"]`` and ``dict(row)`` like ``sqlite3.Row``. Where the two must differ (locks, claim's
``SKIP LOCKED``, JSON, the catalogue), the SQL asks ``dialect(conn)``.

Several bridges share one database: what SQLite gets from its single writer, PostgreSQL gets from
per-contact advisory locks (``lock``). The writer takes the locks a batch's calls declare
(``queue.lock_keys``) first, in one sorted order; a lock a call finds it needs only while it runs
(a contact's line learned from a link) is then only *tried*: if another transaction holds it, the
call raises ``LockLater`` and the writer redoes the batch with that key among the sorted ones. No
transaction ever waits for a lock out of order, so two bridges' batches never deadlock
(``bridge.store.pgwriter``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from bridge.errors import BridgeError
from bridge.store.db import SchemaTooNew
from bridge.store.db import migrations as sqlite_migrations

# One key for "a migration runs": instances starting together migrate one after the other.
_MIGRATION_LOCK = 0x77707362  # "wpsb"
CHANNEL = "wpsb_jobs"  # NOTIFY channel: work became due (one notification per commit)


class PostgresUnavailable(BridgeError):
    """psycopg is not installed, or the database cannot be reached."""


class LockLater(Exception):
    """A call needs advisory locks that another transaction holds, and its batch has taken its locks
    already: the batch is redone with these among them (``bridge.store.pgwriter``)."""

    def __init__(self, keys: set[str]) -> None:
        super().__init__(f"{len(keys)} lock(s) held elsewhere")
        self.keys = keys


def is_url(value: object) -> bool:
    """True for a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return isinstance(value, str) and value.split("://", 1)[0].lower() in ("postgresql", "postgres")


def shown_url(url: str) -> str:
    """The URL without its password, for logs and CLI output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_password(url: str) -> str | None:
    """The password in the URL, if any (the log redactor masks it)."""
    return urlsplit(url).password


class Row(tuple):
    """A result row readable by position, by column name and as a mapping, like ``sqlite3.Row``."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> "Row":
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _rows(cursor: Any) -> Any:
    names = [c.name for c in cursor.description] if cursor.description else []
    index = {name: i for i, name in enumerate(names)}
    return lambda values: Row(values, index)


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite-style SQL as psycopg reads it (see the module docstring)."""
    sql = re.sub(r"\s+INDEXED BY \w+", "", sql)
    sql = sql.replace("BEGIN IMMEDIATE", "BEGIN")
    sql = re.sub(r"\bIS NOT \?", "IS DISTINCT FROM ?", sql)
    sql = re.sub(r"\bIS \?", "IS NOT DISTINCT FROM ?", sql)
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection with the ``sqlite3`` face the queue's SQL expects (autocommit: the
    caller says ``BEGIN``/``COMMIT``, as with ``isolation_level=None``)."""

    dialect = "postgresql"

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        raw.row_factory = _rows
        # Set by a call whose commit makes work due; the writer sends one NOTIFY per commit.
        self.wake = False
        # The keys a writer's batch locked up front (None outside a batch): others are only tried.
        self.prelocked: set[str] | None = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.raw.execute(translate(sql), params)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        cur = self.raw.cursor()
        cur.executemany(translate(sql), list(seq))
        return cur

    def close(self) -> None:
        self.raw.close()


def dialect(conn: Any) -> str:
    """``postgresql`` for a ``PgConnection``, else ``sqlite``."""
    return getattr(conn, "dialect", "sqlite")


def lock(conn: Any, keys: Iterable[str]) -> None:
    """Hold the advisory locks of ``keys`` (contact keys, dedupe keys) until the transaction ends;
    nothing on SQLite, whose single writer already serialises every write. Taken in one sorted
    order; a key already held by this transaction is taken again at no cost. Inside a writer's
    batch, a key it did not lock up front is tried: LockLater when another transaction holds it."""
    if dialect(conn) != "postgresql":
        return
    wanted = sorted(set(keys))
    if conn.prelocked is not None:
        late = [k for k in wanted if k not in conn.prelocked]
        got = try_lock(conn, late)
        conn.prelocked |= got
        if len(got) < len(late):
            raise LockLater(set(late) - got)
        return
    if wanted:
        conn.raw.execute("SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(k, 0) AS h"
                         " FROM unnest(%s::text[]) AS k ORDER BY h) AS s", (wanted,))


def try_lock(conn: Any, keys: list[str]) -> set[str]:
    """The ``keys`` whose advisory lock this transaction got without waiting (all of them on SQLite)."""
    if dialect(conn) != "postgresql" or not keys:
        return set(keys)
    rows = conn.raw.execute("SELECT k FROM unnest(%s::text[]) AS k"
                            " WHERE pg_try_advisory_xact_lock(hashtextextended(k, 0))", (keys,)).fetchall()
    return {r[0] for r in rows}


def wake(conn: Any) -> None:
    """Mark that this transaction made work due: the other bridges are told at commit."""
    if dialect(conn) == "postgresql":
        conn.wake = True


def connect(url: str, *, autocommit: bool = True, read_only: bool = False,
            application_name: str = "wp-sync-bridge") -> PgConnection:
    """A connection to ``url``; raises PostgresUnavailable when psycopg is missing or the server
    refuses (the message never holds the password)."""
    try:
        import psycopg
    except ImportError:
        raise PostgresUnavailable("database.url is PostgreSQL but psycopg is not installed: "
                                  "pip install 'wp-sync-bridge[postgresql]'") from None
    try:
        raw = psycopg.connect(url, autocommit=autocommit, application_name=application_name,
                              connect_timeout=10)
    except psycopg.Error as exc:
        raise PostgresUnavailable(_scrubbed(str(exc), url)) from None
    if read_only:
        raw.execute("SET default_transaction_read_only = on")
    return PgConnection(raw)


def _scrubbed(text: str, url: str) -> str:
    password = url_password(url)
    text = text.replace(url, shown_url(url))
    return text.replace(password, "***") if password else text


def migrations() -> list[tuple[int, str, str]]:
    """The packaged PostgreSQL migrations as (version, name, sql), in order."""
    return sqlite_migrations("migrations_pg")


def read_version(conn: PgConnection) -> int:
    """The schema version without creating anything (0 for an empty database)."""
    if conn.raw.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
        return 0
    return conn.raw.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]


def migrate(conn: PgConnection) -> int:
    """Apply the missing migrations (one transaction each, instances starting together take
    turns); return the version. Raises SchemaTooNew."""
    known = migrations()
    latest = known[-1][0] if known else 0
    conn.raw.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        conn.raw.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                         " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        current = read_version(conn)
        if current > latest:
            raise SchemaTooNew(current, latest)
        for version, name, sql in known:
            if version <= current:
                continue
            with conn.raw.transaction():
                conn.raw.execute(sql)
                conn.raw.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                                 (version, name))
            current = version
        return current
    finally:
        conn.raw.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
