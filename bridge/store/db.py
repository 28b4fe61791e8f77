"""Open the SQLite database and bring its schema up to date with numbered migrations.

Migrations are ``migrations/NNNN_name.sql`` applied in order inside one transaction each; the
``schema_version`` table records them. A database written by a newer bridge is refused rather
than guessed at.
"""

from __future__ import annotations

import re
import sqlite3
from importlib import resources
from pathlib import Path

from bridge.errors import BridgeError

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class SchemaTooNew(BridgeError):
    """The database has migrations this version of the bridge does not know."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than this bridge supports ({known}); "
            "upgrade wp-sync-bridge or restore a database written by this version"
        )
        self.found = found
        self.known = known


def migrations(folder: str = "migrations") -> list[tuple[int, str, str]]:
    """The packaged migrations as (version, name, sql), in order (``folder``: SQLite's, or
    ``migrations_pg`` for PostgreSQL's)."""
    out = []
    for entry in resources.files("bridge.store").joinpath(folder).iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text()))
    out.sort()
    numbers = [version for version, _, _ in out]
    if len(set(numbers)) != len(numbers):
        # Two files with one number: the second would be skipped silently on every database.
        clash = sorted({n for n in numbers if numbers.count(n) > 1})
        raise RuntimeError(f"migrations numbered {clash} more than once: "
                           f"renumber them (bridge/store/{folder})")
    return out


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection in WAL mode with full fsync on commit: a commit is on disk when it returns."""
    path = Path(path)
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest applied migration, 0 for a new database."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                 " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the missing migrations; return the new version. Raises SchemaTooNew."""
    known = migrations()
    latest = known[-1][0] if known else 0
    current = schema_version(conn)
    if current > latest:
        raise SchemaTooNew(current, latest)
    for version, name, sql in known:
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", (version, name))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = version
    return current
