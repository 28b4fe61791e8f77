"""One thread owns the SQLite connection and commits whatever is pending as one transaction.

Group commit (see shared/reference/durable-intake.md): an fsync costs about as much for 32 rows as
for one, so every call that arrives while a commit is in flight joins the next one. A caller's
future resolves only after the COMMIT that holds its work has returned, i.e. is on disk.
A batch runs without per-call SAVEPOINTs; if a call fails, the batch is redone with one SAVEPOINT
per call, so one failing call does not undo its neighbours.
WAL checkpoints run when the writer is idle instead of inside a busy COMMIT (lower p99).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from typing import Any, Callable, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger("bridge.store")

_STOP = object()


class Writer:
    """The database writer thread. ``await writer.run(fn, *args)`` runs ``fn(conn, *args)`` in it."""

    def __init__(self, conn: sqlite3.Connection, *, checkpoint_every_s: float = 1.0) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="bridge-db-writer", daemon=True)
        self._checkpoint_every_s = checkpoint_every_s
        self.batches = 0
        self.calls = 0
        # Autocheckpoints would run inside COMMIT; do them ourselves when idle.
        conn.execute("PRAGMA wal_autocheckpoint=0")

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in the next committed batch and return its result (or raise its error)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, args, fut, loop))
        return await fut

    def stop(self) -> None:
        """Finish what is queued, checkpoint, and stop the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _loop(self) -> None:
        last_checkpoint = time.monotonic()
        dirty = False
        while True:
            try:
                first = self._queue.get(timeout=self._checkpoint_every_s)
            except queue.Empty:
                if dirty:
                    self._checkpoint()
                    dirty = False
                    last_checkpoint = time.monotonic()
                continue
            items = [first]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(item is _STOP for item in items)
            work = [item for item in items if item is not _STOP]
            if work:
                self._commit_batch(work)
                dirty = True
            if stopping:
                self._checkpoint()
                return
            if dirty and self._queue.empty() and time.monotonic() - last_checkpoint > self._checkpoint_every_s:
                self._checkpoint()
                dirty = False
                last_checkpoint = time.monotonic()

    def _commit_batch(self, work: list[Any]) -> None:
        conn = self._conn
        results: list[tuple[asyncio.Future, asyncio.AbstractEventLoop, bool, Any]]
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = _apply(conn, work)
            except Exception:
                # Rare: a call failed. Undo the batch and redo it with one SAVEPOINT per call, so the
                # failing call gets its own error and its neighbours still commit. (Calls are SQL
                # on this connection only, safe to repeat.)
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                results = _apply_isolated(conn, work)
            conn.execute("COMMIT")
        except Exception as exc:  # the commit itself failed: nobody's work is durable
            log.error("db.commit_failed", error=str(exc), calls=len(work))
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            results = [(fut, loop, False, exc) for _, _, fut, loop in work]
        self.batches += 1
        self.calls += len(work)
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for fut, loop, ok, value in results:
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, done in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, done)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

    def _checkpoint(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("db.checkpoint_failed", error=str(exc))


def _apply(conn: sqlite3.Connection, work: list[Any]) -> list[tuple[asyncio.Future, asyncio.AbstractEventLoop, bool, Any]]:
    # The fast path, without a SAVEPOINT per call: each statement less is one GIL hand-off less
    # between this thread and the event loop (see durable-intake.md); raises the first call error.
    return [(fut, loop, True, fn(conn, *args)) for fn, args, fut, loop in work]


def _apply_isolated(conn: sqlite3.Connection, work: list[Any]) -> list[tuple[asyncio.Future, asyncio.AbstractEventLoop, bool, Any]]:
    results = []
    for fn, args, fut, loop in work:
        conn.execute("SAVEPOINT call")
        try:
            value = fn(conn, *args)
            conn.execute("RELEASE call")
            results.append((fut, loop, True, value))
        except Exception as exc:  # the caller gets its own error; the batch goes on
            conn.execute("ROLLBACK TO call")
            conn.execute("RELEASE call")
            results.append((fut, loop, False, exc))
    return results


def _resolve(done: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for fut, ok, value in done:
        if fut.cancelled():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
