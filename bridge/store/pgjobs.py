"""``PgJobStore``: ``JobStore`` on PostgreSQL (``database.url``), for several bridges sharing one
queue. The same methods and the same SQL (``bridge.store.queue``) as on SQLite; what differs:

- writes go through ``PgWriter`` (a thread group-committing on one connection); reads through a
  read-only connection of their own in a thread (they never queue behind writes);
- no file lock: any number of bridges open the database. Per-contact order and mutual exclusion
  come from the contact's head and its advisory lock (``bridge.store.pgdb``), a running job's
  ownership from its fenced lease: a bridge killed mid-run has its jobs taken over by the others
  (or by itself, restarted) once their heartbeat stood still for a lease (``bridge.store.leases``),
  so nothing is put back at start-up;
- bridges wake each other with ``NOTIFY`` (one per commit that made work due) and otherwise poll.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import structlog

from bridge.store import queue as q
from bridge.store.jobs import JobStore, Reader
from bridge.store.pgdb import CHANNEL, PostgresUnavailable, connect, migrate, shown_url
from bridge.store.pgwriter import PgWriter

log = structlog.get_logger("bridge.store")
LISTEN_ROUND_S = 5.0


class PgReader(Reader):
    """The read-only connection, in its own thread. A read that finds its connection lost (a
    failover, a restart of PostgreSQL) is tried once more on a new one: reads are safe to repeat."""

    def __init__(self, url: str) -> None:
        super().__init__(shown_url(url))  # type: ignore[arg-type]
        self.url = url

    def _open(self) -> Any:
        return connect(self.url, read_only=True, application_name="wp-sync-bridge reader")

    def _call(self, fn: Callable[..., Any], args: tuple) -> Any:
        import psycopg

        try:
            return super()._call(fn, args)
        except psycopg.OperationalError:
            self._drop()
            return super()._call(fn, args)
        except psycopg.Error:
            self._conn.raw.rollback()  # an aborted read transaction would refuse the next read
            raise

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
            self._conn = None


class PgJobStore(JobStore):
    """Open with ``PgJobStore.open(url)``; close with ``close()``."""

    def __init__(self, url: str, writer: PgWriter, clock: Callable[[], float]) -> None:
        super().__init__(shown_url(url), writer, None, clock)  # type: ignore[arg-type]
        self.url = url
        self.reader = PgReader(url)
        self._listener: Any = None

    @classmethod
    def open(cls, url: str, clock: Callable[[], float] = time.time,  # type: ignore[override]
             notify: bool = True) -> "PgJobStore":
        """Connect, migrate (bridges starting together take turns) and start the writer (sending
        ``NOTIFY`` on commits that make work due unless ``notify`` is false: database.notify).
        Raises PostgresUnavailable (the message names no password) or SchemaTooNew."""
        conn = connect(url)
        try:
            migrate(conn)
            instance_id = conn.execute("SELECT id FROM instance").fetchone()[0]
        finally:
            conn.close()
        writer = PgWriter(url, notify=notify)
        writer.start()
        store = cls(url, writer, clock)
        store.instance_id = instance_id
        return store

    async def release_running(self) -> int:
        """Put back this process's own running jobs only (at stop, after the grace period; none at
        start-up, its owner ID being new): other bridges may be running the rest. A job whose bridge
        died is taken over when its lease runs out (``expire_peer_leases``)."""
        return await self._writer.run(q.release_orphans, self.clock(), self.owner, [])

    async def watch(self, on_work: Callable[[], None]) -> None:
        """One round of listening for other bridges' ``NOTIFY`` (``LISTEN_ROUND_S``): each one calls
        ``on_work``. Raises on a lost connection (the caller's error boundary retries)."""
        import psycopg

        if self._listener is None or self._listener.closed:
            try:
                self._listener = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name="wp-sync-bridge listener", connect_timeout=10)
            except psycopg.Error as exc:
                raise PostgresUnavailable(str(exc).replace(self.url, shown_url(self.url))) from None
            await self._listener.execute(f"LISTEN {CHANNEL}")
        try:
            async for _ in self._listener.notifies(timeout=LISTEN_ROUND_S):
                on_work()
        except psycopg.Error:
            await self._listener.close()
            self._listener = None
            raise

    async def close_listener(self) -> None:
        """Close the listening connection (at stop)."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
