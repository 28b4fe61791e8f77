"""The PostgreSQL writer: one connection in a thread of its own, group-committing like SQLite's
writer process (``bridge.store.writer``): every call that arrives while a commit is in flight joins
the next transaction, and ``await writer.run(fn, *args)`` returns once that COMMIT has returned.

A thread, not a process: psycopg releases the GIL while it waits on the server, which is most of
a batch's time. Each batch, in one transaction:

1. takes the advisory locks of all its calls (``queue.lock_keys``) in one sorted order, so batches
   of several bridges never wait on each other in a cycle (a lock a call needs beyond those is
   only tried; held elsewhere, the batch is redone with it among the sorted ones: ``LockLater``);
2. runs the calls without per-call SAVEPOINTs; if one fails, redoes the batch with a SAVEPOINT per
   call, so one failing call does not undo its neighbours;
3. sends one ``NOTIFY`` when a call made work due (the other bridges wake; not with
   ``database.notify = false``) with the COMMIT, in one round trip (BEGIN and the locks are one
   round trip too).

A deadlock or serialization failure anyway (an operator's command in between) redoes the batch.
A connection lost before the COMMIT was sent (a failover, a restart of PostgreSQL: the server
rolled the transaction back) is replaced and the batch redone once; lost during the COMMIT, the
outcome is unknown, so the calls fail with ``WriterUnavailable`` (intake answers 503 and the
sender retries; dedupe absorbs a repeat of what did commit).
"""

from __future__ import annotations

import asyncio
import queue as threading_queue
import threading
import time
from typing import Any, Awaitable, Callable, TypeVar

import structlog

from bridge.store import queue as q
from bridge.store.pgdb import CHANNEL, LockLater, PgConnection, PostgresUnavailable, connect, lock
from bridge.store.writer import WriterUnavailable

T = TypeVar("T")
log = structlog.get_logger("bridge.store")
MAX_BATCH = 512
REDO_LIMIT = 5
# Connections committing at once, each its own group of calls: while one waits for its COMMIT, the
# next group runs on the other (a delivery sent after another was answered is in a later group, so
# order holds; the locks keep one contact's groups apart). bench/scale.py: one lane, 0.46x
# SQLite's intake; two, see README.
LANES = 2
LATE_LOCK_REDOS = 50  # a batch redone for a lock its calls found late (each redo locks it up front)

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple]


class _CommitFailed(Exception):
    """The COMMIT itself failed: whether the batch is on disk is unknown (never redone)."""


class PgWriter:
    """``run(fn, *args)`` queues ``fn(conn, *args)`` for the next committed batch."""

    def __init__(self, url: str, notify: bool = True) -> None:
        self.url = url
        self.notify = notify  # false: peers find new work by polling only (database.notify)
        self.batches = 0
        self.calls = 0
        self.isolated = 0  # batches redone call by call because one call failed
        self._inbox: threading_queue.SimpleQueue[_Call | None] = threading_queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._conns: list[PgConnection | None] = []
        self._closing = False

    pid = None  # no child process (the SQLite writer has one)

    def start(self, lanes: int = LANES) -> None:
        """Connect (raises PostgresUnavailable) and start the writer threads, one per lane."""
        self._conns = [connect(self.url, application_name="wp-sync-bridge writer") for _ in range(lanes)]
        self._threads = [threading.Thread(target=self._serve, args=(lane,), name=f"wpsb-pg-writer-{lane}",
                                          daemon=True) for lane in range(lanes)]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        """Queue the call; the future resolves with its value (or error) after the commit."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if self._closing:
            fut.set_exception(WriterUnavailable("the database is closed"))
        else:
            self._inbox.put((loop, fut, fn, args))
        return fut

    def stop(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued, then close the connection."""
        self._closing = True
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout_s)
        for conn in self._conns:
            if conn is not None:
                conn.close()
        self._conns = [None] * len(self._conns)

    # --- the thread ------------------------------------------------------------------------------

    def _serve(self, lane: int) -> None:
        """One lane's loop: each stop sentinel (``stop`` puts one per lane) ends one lane."""
        stop = False
        while not stop:
            first = self._inbox.get()
            if first is None:
                return
            calls: list[_Call] = [first]
            while len(calls) < MAX_BATCH:
                try:
                    more = self._inbox.get_nowait()
                except threading_queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                calls.append(more)
            if calls:
                self._commit(lane, calls)

    def _commit(self, lane: int, calls: list[_Call]) -> None:
        extra: set[str] = set()
        attempt = late = reconnects = 0
        while True:
            try:
                conn = self._connected(lane)
                results = self._transaction(conn, calls, extra)
                break
            except LockLater as exc:
                self._discard(lane)
                extra |= exc.keys
                late += 1
                if late < LATE_LOCK_REDOS:
                    continue
                err = WriterUnavailable("the database write found its locks always taken; not committed")
                results = [(False, err)] * len(calls)
                break
            except Exception as exc:  # noqa: BLE001 - sorted out below, answered to the callers
                self._discard(lane)
                if _connection_lost(exc) and reconnects == 0:
                    reconnects += 1  # rolled back by the server: safe to redo on a new connection
                    self._conns[lane] = None
                    continue
                exc = exc.__cause__ if isinstance(exc, _CommitFailed) and exc.__cause__ else exc
                attempt += 1
                if _retryable(exc) and attempt < REDO_LIMIT:
                    time.sleep(0.01 * (attempt + 1))
                    continue
                log.error("db.commit_failed", error=_error_text(exc), calls=len(calls))
                err = WriterUnavailable("the database write failed; the call was not committed: "
                                        + _error_text(exc))
                results = [(False, err)] * len(calls)
                break
        self.batches += 1
        self.calls += len(calls)
        for (loop, fut, _, _), (ok, value) in zip(calls, results):
            loop.call_soon_threadsafe(_settle, fut, ok, value)

    def _connected(self, lane: int) -> PgConnection:
        conn = self._conns[lane]
        if conn is None:
            conn = self._conns[lane] = connect(self.url, application_name="wp-sync-bridge writer")
        return conn

    def _discard(self, lane: int) -> None:
        """After an error the connection may be mid-transaction or dead: roll back, or drop it."""
        conn = self._conns[lane]
        if conn is None:
            return
        try:
            if conn.raw.closed:
                raise RuntimeError("closed")
            conn.raw.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - a broken connection is replaced at the next batch
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conns[lane] = None

    def _transaction(self, conn: PgConnection, calls: list[_Call], extra: set[str]) -> list[tuple[bool, Any]]:
        keys = {key for _, _, fn, args in calls for key in q.lock_keys(fn, args)} | extra
        try:
            self._begin(conn, keys)
            try:
                results = self._fast(conn, calls)
            except Exception as exc:
                if isinstance(exc, LockLater) or _retryable(exc) or _connection_lost(exc):
                    raise
                conn.raw.execute("ROLLBACK")
                self.isolated += 1
                self._begin(conn, keys)
                results = [self._isolated(conn, fn, args) for _, _, fn, args in calls]
            # One round trip for both (a simple query of two statements, in the transaction's order).
            try:
                conn.raw.execute(f"NOTIFY {CHANNEL}; COMMIT" if conn.wake and self.notify else "COMMIT")
            except Exception as exc:
                raise _CommitFailed(str(exc)) from exc
        finally:
            conn.prelocked = None
        return results

    @staticmethod
    def _fast(conn: PgConnection, calls: list[_Call]) -> list[tuple[bool, Any]]:
        """Every call, without savepoints; a run of consecutive calls of a function that has a
        ``many`` form (intake's ``aliases.enqueue_contact``) goes through it in one piece."""
        results: list[tuple[bool, Any]] = []
        i = 0
        while i < len(calls):
            fn, many, j = calls[i][2], getattr(calls[i][2], "many", None), i + 1
            if many is None:
                results.append((True, fn(conn, *calls[i][3])))
            else:
                while j < len(calls) and calls[j][2] is fn:
                    j += 1
                results += [(True, value) for value in many(conn, [call[3] for call in calls[i:j]])]
            i = j
        return results

    @staticmethod
    def _begin(conn: PgConnection, keys: set[str]) -> None:
        conn.wake, conn.prelocked = False, None
        with conn.raw.pipeline():  # BEGIN and the batch's locks in one round trip
            conn.raw.execute("BEGIN")
            lock(conn, keys)
        conn.prelocked = set(keys)

    @staticmethod
    def _isolated(conn: PgConnection, fn: Callable[..., Any], args: tuple) -> tuple[bool, Any]:
        conn.raw.execute("SAVEPOINT call")
        try:
            value = fn(conn, *args)
        except Exception as exc:  # the caller gets its own error; the batch goes on
            if isinstance(exc, LockLater) or _retryable(exc) or _connection_lost(exc):
                raise
            conn.raw.execute("ROLLBACK TO SAVEPOINT call")
            return False, exc
        conn.raw.execute("RELEASE SAVEPOINT call")
        return True, value


def _settle(fut: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the batch is redone."""
    return getattr(exc, "sqlstate", None) in ("40P01", "40001")


def _connection_lost(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, (psycopg.OperationalError, PostgresUnavailable))


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
