"""Which store a configuration opens: SQLite at ``database.path`` (one bridge, the default) or
PostgreSQL at ``database.url`` (several bridges on one queue)."""

from __future__ import annotations

from typing import Any

from bridge.store.jobs import JobStore


def open_store(database: Any) -> JobStore:
    """Open (creating and migrating) the configured store. Raises DatabaseLocked, SchemaTooNew,
    OSError and sqlite3.Error (SQLite), PostgresUnavailable (PostgreSQL)."""
    if database.backend == "postgresql":
        from bridge.store.pgjobs import PgJobStore

        return PgJobStore.open(database.url.get_secret_value(), notify=database.notify)
    return JobStore.open(database.path)
