"""``JobStore``: the asyncio face of the database. Every call goes through the group-commit writer
process (``bridge.store.writer``); an awaited call has returned only once its transaction is on disk."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from bridge.errors import BridgeError
from bridge.store import queue as q
from bridge.store.db import connect, migrate
from bridge.store.writer import Writer


class DatabaseLocked(BridgeError):
    """Another bridge process already owns this database file."""


class JobStore:
    """Open with ``await JobStore.open(path)``; close with ``close()``."""

    def __init__(self, path: Path, writer: Writer, lock_fd: int | None, clock: Callable[[], float]) -> None:
        self.path = path
        self._writer = writer
        self._lock_fd = lock_fd
        self.clock = clock
        self.instance_id = ""

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
                contact_key: str, payload: str) -> Awaitable[tuple[int, bool]]:
        """Durably queue a job (or find the duplicate); await it for (job_id, duplicate). ``payload``
        is JSON text (``Delivery.payload_json()``). Not a coroutine (see ``Writer.run``)."""
        return self._writer.run(q.enqueue, self.clock(), dedupe_key, window_s, connection, action, contact_key, payload)

    async def reject(self, **fields: Any) -> int:
        """Keep a rejected delivery (see ``queue.reject``)."""
        return await self._writer.run(
            q.reject, self.clock(), fields["connection"], fields["status"], fields["reason"],
            fields["method"], fields["query"], fields["content_type"], fields["body"], fields.get("auth"),
        )

    async def claim(self, limit: int, lease_s: float) -> list[q.Job]:
        return await self._writer.run(q.claim, self.clock(), limit, lease_s)

    async def renew(self, job_ids: list[int], lease_s: float) -> None:
        await self._writer.run(q.renew, self.clock(), job_ids, lease_s)

    async def save_stage(self, job_id: int, stage: str | None, secret: str | None) -> None:
        await self._writer.run(q.save_stage, self.clock(), job_id, stage, secret)

    async def finish(self, job: q.Job, outcome: dict[str, Any]) -> None:
        await self._writer.run(q.finish, self.clock(), job, outcome)

    async def retry_later(self, job: q.Job, run_at: float, error: str) -> None:
        await self._writer.run(q.retry_later, self.clock(), job, run_at, error)

    async def bury(self, job: q.Job, error: str) -> None:
        await self._writer.run(q.bury, self.clock(), job, error)

    async def release_running(self, expired_only: bool) -> int:
        return await self._writer.run(q.release_running, self.clock(), expired_only)

    async def next_run_at(self) -> float | None:
        return await self._writer.run(q.next_run_at)

    async def counts(self) -> dict[str, int]:
        return await self._writer.run(q.counts)

    async def get_job(self, job_id: int) -> dict[str, Any] | None:
        return await self._writer.run(q.get_job, job_id)
