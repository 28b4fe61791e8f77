"""``JobStore``: the asyncio face of the database. Every write goes through the group-commit writer
process (``bridge.store.writer``); an awaited write has returned only once its transaction is on
disk. Reads (``get_job``, ``counts``, readiness, metrics) use a read-only connection of their own
in a thread, so they neither wait behind group commits nor block the event loop. Leases: see
``bridge.store.leases``."""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import structlog

from bridge.errors import BridgeError
from bridge.store import aliases
from bridge.store import queue as q
from bridge.store.db import connect, migrate
from bridge.store.leases import Lease, LeaseWatch
from bridge.store.writer import Writer

log = structlog.get_logger("bridge.store")


class DatabaseLocked(BridgeError):
    """Another bridge process already owns this database file."""


class FencedOut(BridgeError):
    """This run of a job no longer owns it (it was put back and claimed again): its writes are
    refused, and it must stop."""

    def __init__(self, job_id: int, attempt: int) -> None:
        super().__init__(f"job {job_id}: attempt {attempt} no longer owns the job")
        self.job_id = job_id
        self.attempt = attempt


class Reader:
    """One read-only connection, used from one thread: reads never queue behind the writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="wpsb-read")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def _open(self) -> Any:
        conn = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro", uri=True,
                               check_same_thread=False, isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    def _call(self, fn: Callable[..., Any], args: tuple) -> Any:
        if self._conn is None:
            self._conn = self._open()
        return fn(self._conn, *args)

    def run(self, fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        """Run ``fn(conn, *args)`` in the reader thread."""
        return asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn, args)

    def close(self) -> None:
        """Close the connection (in its thread) and end the thread; a second call does nothing."""
        if self._closed:
            return
        self._closed = True

        def close_conn() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._pool.submit(close_conn)
        self._pool.shutdown(wait=True)


class JobStore:
    """Open with ``await JobStore.open(path)``; close with ``close()``."""

    def __init__(self, path: Path, writer: Writer, lock_fd: int | None, clock: Callable[[], float]) -> None:
        self.path = path
        self._writer = writer
        self._lock_fd = lock_fd
        self.clock = clock
        self.instance_id = ""
        # Who holds this process's leases: new at every start (see bridge.store.leases).
        self.owner = f"{os.getpid():x}-{secrets.token_hex(6)}"
        self.reader = Reader(path)
        self._counts: dict[str, int] | None = None
        self._counts_at = float("-inf")
        self._counts_task: asyncio.Future | None = None

    @classmethod
    def open(cls, path: Path | str, clock: Callable[[], float] = time.time) -> "JobStore":
        """Open (creating and migrating) the database; refuse a file another bridge holds."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise DatabaseLocked(f"{path} is in use by another wp-sync-bridge process") from None
        try:
            conn = connect(path)
            try:
                migrate(conn)
                instance_id = conn.execute("SELECT id FROM instance").fetchone()[0]
            finally:
                conn.close()
            writer = Writer(path)
            writer.start()
        except BaseException:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
            raise
        store = cls(path, writer, lock_fd, clock)
        store.instance_id = instance_id
        return store

    def close(self) -> None:
        """Finish pending writes and release the database."""
        self._writer.stop()
        self.reader.close()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def writer_pid(self) -> int | None:
        """The writer child's process ID, while one runs (for operators and the benchmark)."""
        return self._writer.pid

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one ``bridge.store.queue`` function in the next committed batch."""
        return await self._writer.run(fn, *args)

    def enqueue(self, dedupe_key: str, window_s: float, connection: str, action: str,
                contact_key: str, payload: str, waiting_only: bool = False) -> Awaitable[tuple[int, bool]]:
        """Durably queue a job (or find the duplicate); await it for (job_id, duplicate). ``payload``
        is JSON text (``Delivery.payload_json()``); ``waiting_only``: see ``queue.enqueue``. Not a
        coroutine (see ``Writer.run``)."""
        return self._writer.run(q.enqueue, self.clock(), dedupe_key, window_s, connection, action,
                                contact_key,
                                payload, waiting_only)

    def enqueue_contact(self, dedupe_key: str, window_s: float, connection: str, action: str,
                        contact_id: str | None, email: str | None, payload: str,
                        waiting_only: bool = False, learns: bool = True) -> Awaitable[tuple[int, bool, str]]:
        """``enqueue`` under the contact's one ordering key, learning the link the delivery states
        (when ``learns``) in the same transaction (``aliases.enqueue_contact``): (job_id, duplicate,
        link event). Not a coroutine (see ``Writer.run``)."""
        return self._writer.run(aliases.enqueue_contact, self.clock(), dedupe_key, window_s, connection,
                                action, contact_id, email, payload, waiting_only, learns)

    async def learn_link(self, connection: str, contact_id: str, email: str) -> str | None:
        """Learn a run's finding that ``email`` is the contact's current email (``aliases.learn``):
        the event, or None when it was known already (checked on the reader first, so a settled
        link costs no write)."""
        if await self.reader.run(aliases.link_settled, connection, contact_id, email):
            return None
        return await self._writer.run(aliases.learn, self.clock(), connection, contact_id, email, True)

    async def reject(self, **fields: Any) -> int:
        """Keep a rejected delivery (see ``queue.reject``)."""
        return await self._writer.run(
            q.reject, self.clock(), fields["connection"], fields["status"], fields["reason"],
            fields["method"], fields["query"], fields["content_type"], fields["body"], fields.get("auth"),
        )

    async def claim(self, limit: int, lease_s: float, keep: list[int] | None = None) -> list[q.Job]:
        """Claim due jobs for this process (see ``queue.claim``; ``keep``: the jobs it runs)."""
        return await self._writer.run(q.claim, self.clock(), self.owner, limit, lease_s, keep)

    async def renew(self, job_ids: list[int], lease_s: float) -> None:
        """Renew this process's leases and bump their heartbeats."""
        await self._writer.run(q.renew, self.clock(), self.owner, job_ids, lease_s)

    async def save_stage(self, job: q.Job, stage: str | None, secret: str | None) -> None:
        """Record a run's progress; raises FencedOut when this run no longer owns the job."""
        if not await self._writer.run(q.save_stage, self.clock(), job, stage, secret):
            self._fenced(job, "save_stage")
            raise FencedOut(job.id, job.attempts)

    async def finish(self, job: q.Job, outcome: dict[str, Any]) -> bool:
        """Mark the job done; False (logged) when this run was fenced out."""
        return await self._written(job, "finish", q.finish, outcome)

    async def retry_later(self, job: q.Job, run_at: float, error: str) -> bool:
        """Queue the job again for ``run_at``; False (logged) when this run was fenced out."""
        return await self._written(job, "retry_later", q.retry_later, run_at, error)

    async def bury(self, job: q.Job, error: str) -> bool:
        """Move the job to the dead-letter state; False (logged) when this run was fenced out."""
        return await self._written(job, "bury", q.bury, error)

    async def _written(self, job: q.Job, what: str, fn: Callable[..., bool], *args: Any) -> bool:
        ok = await self._writer.run(fn, self.clock(), job, *args)
        if not ok:
            self._fenced(job, what)
        return ok

    def _fenced(self, job: q.Job, what: str) -> None:
        log.warning("job.fenced_out", job_id=job.id, attempt=job.attempts, write=what)

    async def watch(self, on_work: Callable[[], None]) -> None:
        """Call ``on_work`` when another process makes work due. One bridge owns a SQLite file, and
        its own intake wakes its worker directly: nothing to watch (the PostgreSQL store listens)."""

    async def close_listener(self) -> None:
        """Stop watching (nothing to close on SQLite; see ``watch``)."""

    async def release_running(self) -> int:
        """Put back every running job (at start-up, see ``queue.release_running``)."""
        return await self._writer.run(q.release_running, self.clock())

    async def expire_peer_leases(self, watch: LeaseWatch) -> list[Lease]:
        """Put back other owners' jobs whose heartbeat ``watch`` saw stand still for a lease."""
        expired = watch.expired(await self.reader.run(q.running_leases, self.owner))
        done = [lease for lease in expired if await self._writer.run(q.expire_lease, self.clock(), lease)]
        if done:
            log.warning("queue.leases_expired", jobs=[lease[0] for lease in done],
                        owners=sorted({lease[1] for lease in done}))
        return done

    async def next_run_at(self) -> float | None:
        return await self.reader.run(q.next_run_at)

    async def counts(self) -> dict[str, int]:
        """Jobs per status, read now (a covering-index count: not for every scrape)."""
        return await self.reader.run(q.counts)

    async def cached_counts(self, max_age_s: float) -> dict[str, int]:
        """Jobs per status, counted at most once every ``max_age_s`` (metrics, readiness)."""
        if self._counts is None or time.monotonic() - self._counts_at > max_age_s:
            if self._counts_task is None:
                self._counts_task = asyncio.ensure_future(self.counts())
            task = self._counts_task
            try:
                counts = await asyncio.shield(task)
            finally:
                if self._counts_task is task and task.done():
                    self._counts_task = None
            self._counts, self._counts_at = counts, time.monotonic()
        return self._counts

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one read-only ``bridge.store.queue`` function on the reader connection."""
        return await self.reader.run(fn, *args)

    async def get_job(self, job_id: int) -> dict[str, Any] | None:
        return await self.reader.run(q.get_job, job_id)
