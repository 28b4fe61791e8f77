"""The database writer: a child process that owns the SQLite connection and group-commits.

Group commit (see shared/reference/durable-intake.md): an fsync costs about as much for 32 rows
as for one, so every call that arrives while a commit is in flight joins the next one. A caller's
``await writer.run(fn, *args)`` returns only after the COMMIT holding its work has returned, i.e.
is on disk.

Why a process and not a thread: a writer thread shares the GIL with the event loop, so every batch
costs the loop a round of GIL hand-offs (measured here: the loop thread sat idle while batches
waited for the GIL). A child process commits on the other core. The two talk over a socket pair in
length-prefixed pickle frames; each frame is a list: calls one way, results the other. The calls are
the module-level functions of ``bridge.store.queue`` (pickled by name), so nothing but SQL runs
in the child.

A batch runs without per-call SAVEPOINTs; if a call fails, the batch is redone with one SAVEPOINT
per call, so one failing call does not undo its neighbours. WAL checkpoints run when the writer is
idle instead of inside a busy COMMIT (lower p99).

Lifecycle: the child ignores SIGINT/SIGTERM (systemd signals the whole service; the parent decides
when the database closes) and exits when the parent closes its end of the socket, or dies: it
commits what it has already read, checkpoints and exits. If the child dies, the calls in flight
fail with ``WriterUnavailable`` (intake answers 503, the sender retries) and the next call starts
a new child.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import structlog

from bridge.errors import BridgeError

T = TypeVar("T")
log = structlog.get_logger("bridge.store")

# The child runs SQL only: it gets the locale, the temporary directory and the interpreter's own
# switches, never the daemon's settings (WPSB_* carry the application password and CRM tokens).
CHILD_ENV_NAMES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SQLITE_TMPDIR", "PYTHONPATH",
                             "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONFAULTHANDLER",
                             "PYTHONDEVMODE", "PYTHONHASHSEED", "PYTHONSAFEPATH", "COVERAGE_PROCESS_START"})

_HEADER = struct.Struct("!I")
_READ_SIZE = 1 << 20


class WriterUnavailable(BridgeError):
    """The database writer process is gone; the call was not committed (or its answer was lost)."""


def child_env(environ: Mapping[str, str], package_root: str) -> dict[str, str]:
    """The writer child's environment: only ``CHILD_ENV_NAMES`` and ``LC_*`` from ``environ``, with
    ``package_root`` first on PYTHONPATH (so ``-m bridge.store.writer`` finds this checkout)."""
    env = {k: v for k, v in environ.items() if k in CHILD_ENV_NAMES or k.startswith("LC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


# --- shared by both sides -------------------------------------------------------------------------


def frame(obj: Any) -> bytes:
    """One length-prefixed pickle frame."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def take_frames(buf: bytearray) -> list[Any]:
    """Remove and decode every complete frame at the start of ``buf``."""
    out, pos = [], 0
    while len(buf) - pos >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buf, pos)
        end = pos + _HEADER.size + size
        if len(buf) < end:
            break
        out.append(pickle.loads(memoryview(buf)[pos + _HEADER.size:end]))
        pos = end
    if pos:
        del buf[:pos]
    return out


def commit_batch(conn: sqlite3.Connection, calls: list[tuple[int, Callable[..., Any], tuple]],
                 on_commit_error: Callable[[Exception], None] = lambda exc: None
                 ) -> list[tuple[int, bool, Any]]:
    """Run ``fn(conn, *args)`` for every call in one transaction and commit: [(call_id, ok, value)]."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # The fast path, without a SAVEPOINT per call; raises the first call error.
            results = [(cid, True, fn(conn, *args)) for cid, fn, args in calls]
        except Exception:
            # Rare: a call failed. Undo the batch and redo it with one SAVEPOINT per call, so the
            # failing call gets its own error and its neighbours still commit. (Calls are SQL on
            # this connection only, safe to repeat.)
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            results = _apply_isolated(conn, calls)
        conn.execute("COMMIT")
        return results
    except Exception as exc:  # the commit itself failed: nobody's work is durable
        on_commit_error(exc)
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        return [(cid, False, exc) for cid, _, _ in calls]


def answer_first(calls: list[tuple[int, Callable[..., Any], tuple]]
                 ) -> list[list[tuple[int, Callable[..., Any], tuple]]]:
    """The calls of one read in the transactions that commit them: the calls a sender is waiting on
    (functions marked ``answers_sender``: a delivery's enqueue, whose commit its 2xx waits for)
    first, on their own, when the read holds others too; then the rest. A read's calls were all in
    flight at once, none waiting for another's answer, so any order of them is one they could have
    arrived in. Without this, a delivery's answer waited for the results of a whole WordPress batch
    (a hundred finished jobs, several ms) whenever they shared a read."""
    urgent: list[tuple[int, Callable[..., Any], tuple]] = []
    rest: list[tuple[int, Callable[..., Any], tuple]] = []
    for call in calls:
        (urgent if getattr(call[1], "answers_sender", False) else rest).append(call)
    return [urgent, rest] if urgent and rest else [calls]


def _apply_isolated(conn: sqlite3.Connection,
                    calls: list[tuple[int, Callable[..., Any], tuple]]) -> list[tuple[int, bool, Any]]:
    results = []
    for cid, fn, args in calls:
        conn.execute("SAVEPOINT call")
        try:
            value = fn(conn, *args)
            conn.execute("RELEASE call")
            results.append((cid, True, value))
        except Exception as exc:  # the caller gets its own error; the batch goes on
            conn.execute("ROLLBACK TO call")
            conn.execute("RELEASE call")
            results.append((cid, False, exc))
    return results


def _portable(results: list[tuple[int, bool, Any]]) -> list[tuple[int, bool, Any]]:
    """Errors that cannot cross the socket (unpicklable) become a RuntimeError naming them."""
    out = []
    for cid, ok, value in results:
        if not ok:
            try:
                pickle.loads(pickle.dumps(value))
            except Exception:
                value = RuntimeError(f"{type(value).__name__}: {value}")
        out.append((cid, ok, value))
    return out


# --- the child --------------------------------------------------------------------------------------


def _child_log(event: str, **fields: Any) -> None:
    try:
        print(json.dumps({"event": event, "level": "error", "logger": "bridge.store.writer", **fields}),
              file=sys.stderr, flush=True)
    except OSError:  # the disk that is full may be the log's too: the writer must outlive that
        pass


def serve(sock: socket.socket, conn: sqlite3.Connection, checkpoint_every_s: float = 1.0) -> None:
    """The child's loop: read calls, commit each batch, answer; checkpoint when idle; stop at EOF."""
    conn.execute("PRAGMA wal_autocheckpoint=0")  # would run inside COMMIT; we do it when idle
    buf = bytearray()
    dirty, last_checkpoint, eof = False, time.monotonic(), False

    def checkpoint() -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            _child_log("db.checkpoint_failed", error=str(exc))

    while not eof:
        ready, _, _ = select.select([sock], [], [], checkpoint_every_s if dirty else None)
        if not ready:
            checkpoint()
            dirty, last_checkpoint = False, time.monotonic()
            continue
        # Read everything already sent: this batch is whatever arrived while the last one committed.
        while True:
            try:
                data = sock.recv(_READ_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except ConnectionResetError:  # the parent died with data unread on its side: as EOF
                data = b""
            if not data:
                eof = True
                break
            buf += data
        calls = [call for batch in take_frames(buf) for call in batch]
        if not calls:
            continue
        gone = False
        for group in answer_first(calls):
            results = commit_batch(conn, group, lambda exc, n=len(group): _child_log(
                "db.commit_failed", error=str(exc), calls=n))
            dirty = True
            if eof:
                continue  # the parent closed its end: what was read is committed, nobody waits for it
            try:
                sock.sendall(frame(_portable(results)))
            except OSError:
                gone = True  # the parent is gone
                break
        if eof or gone:
            break
        if time.monotonic() - last_checkpoint > checkpoint_every_s:
            checkpoint()
            dirty, last_checkpoint = False, time.monotonic()
    checkpoint()
    conn.close()


def child_main(argv: list[str]) -> int:
    """Entry point of the writer process: ``python -m bridge.store.writer FD DB_PATH``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from bridge.store.db import connect

    fd, path = int(argv[0]), argv[1]
    sock = socket.socket(fileno=fd)
    serve(sock, connect(path))
    return 0


# --- the parent ---------------------------------------------------------------------------------------


class _Link(asyncio.Protocol):
    def __init__(self, writer: "Writer") -> None:
        self.writer = writer
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for results in take_frames(self.buf):
            self.writer._resolve(results)

    def connection_lost(self, exc: Exception | None) -> None:
        self.writer._lost(self)


class Writer:
    """The parent's handle on the writer process. ``await writer.run(fn, *args)`` runs ``fn(conn, *args)``
    in the next committed batch and returns its result (or raises its error)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.batches = 0
        self.calls = 0
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: _Link | None = None
        self._connecting: asyncio.Future | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._outbox: list[tuple[int, Callable[..., Any], tuple]] = []
        self._next_id = 0
        self._closing = False

    @property
    def pid(self) -> int | None:
        """The child's process ID while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the writer process (the asyncio side connects on the first call)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = child_env(os.environ, str(Path(__file__).resolve().parent.parent.parent))
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "bridge.store.writer",
                                           str(child.fileno()), self.path],
                                          pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env)
        finally:
            child.close()
        self._sock = parent
        self._transport = self._link = self._connecting = None

    def run(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        """Queue ``fn(conn, *args)`` for the next batch; awaiting the result returns its value once
        committed. A plain method returning a future, not a coroutine: the intake awaits it once
        per delivery, and a coroutine layer is a measurable share of that."""
        if self._transport is None:
            return self._run_connected(fn, args)
        return self._submit(fn, args)

    async def _run_connected(self, fn: Callable[..., T], args: tuple) -> T:
        await self._connect()
        return await self._submit(fn, args)

    def _submit(self, fn: Callable[..., T], args: tuple) -> "asyncio.Future[T]":
        loop = self._loop
        self._next_id += 1
        cid = self._next_id
        fut: asyncio.Future[T] = loop.create_future()
        self._pending[cid] = fut
        if not self._outbox:
            loop.call_soon(self._flush)  # every call made in this loop iteration goes in one frame
        self._outbox.append((cid, fn, args))
        return fut

    async def _connect(self) -> None:
        if self._closing:
            raise WriterUnavailable("the database is closed")
        if self._connecting is None:
            if self._sock is None:  # the previous child died: start a new one
                self.start()
            self._connecting = asyncio.ensure_future(self._open_link())
        try:
            await asyncio.shield(self._connecting)
        except Exception:
            self._connecting = None
            raise

    async def _open_link(self) -> None:
        loop = asyncio.get_running_loop()
        transport, link = await loop.create_unix_connection(lambda: _Link(self), sock=self._sock)
        self._transport, self._link, self._loop = transport, link, loop

    def _flush(self) -> None:
        calls, self._outbox = self._outbox, []
        if self._transport is None or self._transport.is_closing():
            self._fail([cid for cid, _, _ in calls],
                       WriterUnavailable("the database writer process is not running"))
            return
        try:
            self._transport.write(frame(calls))
        except Exception as exc:  # an argument that cannot be pickled: a bug in the caller
            for cid, _, _ in calls:
                fut = self._pending.pop(cid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)

    def _resolve(self, results: list[tuple[int, bool, Any]]) -> None:
        self.batches += 1
        self.calls += len(results)
        for cid, ok, value in results:
            fut = self._pending.pop(cid, None)
            if fut is None or fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _fail(self, ids: list[int], exc: Exception) -> None:
        for cid in ids:
            fut = self._pending.pop(cid, None)
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def _lost(self, link: _Link) -> None:
        if link is not self._link:
            return
        code = self._proc.poll() if self._proc else None
        if not self._closing:
            log.error("db.writer_died", exit_code=code, calls_in_flight=len(self._pending))
        self._fail(list(self._pending),
                   WriterUnavailable("the database writer process stopped; the call may not be committed"))
        self._transport = self._link = self._connecting = None
        self._sock = None
        if self._proc is not None and code is None and not self._closing:
            self._proc.kill()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, timeout_s: float = 30.0) -> None:
        """Let the child commit what it has, checkpoint and exit; wait for it."""
        self._closing = True
        if self._outbox:
            self._flush()
        if self._sock is not None:
            try:  # synchronous, unlike transport.close(): the child sees EOF even while we block below
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if self._transport is not None:
            try:
                self._transport.abort()
            except RuntimeError:  # its event loop is closed already
                pass
        elif self._sock is not None:
            self._sock.close()
        self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.error("db.writer_stop_timeout", timeout_s=timeout_s)
                self._proc.kill()
                self._proc.wait()
        self._fail(list(self._pending), WriterUnavailable("the database is closed"))


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
