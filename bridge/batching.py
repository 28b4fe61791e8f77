"""Upserts of concurrently running jobs, sent to WordPress as one batch request (plugin feature
``upsert_batch``, issue 13): WordPress's bootstrap and its log flushes are paid per request, so
many users per request is what lifts the bridge past WordPress's own one-request-per-user rate.

Each job still runs on its own (planned by ``bridge.core.plan``, fenced, finished or retried by
the worker); only its one upsert call goes through here, and it gets back its own result or its
own typed error. Batches form like group commits: while every request slot is busy, upserts
wait and go together in the next request. A batch that is not full goes only while no other
batch that was not full is in flight (Nagle's rule, RFC 896, with requests for segments): the
upserts arriving meanwhile wait for that request's answer (at most ``PARTIAL_HOLD_MAX_S``), or
until they fill a batch, and go together. Full batches take any free slot. With nothing in
flight an upsert goes at once unless other running jobs are still on their way to theirs; then
it waits for them at most ``worker.batch_linger_s``. So a lone job is never held back, and idle
latency does not grow.

The hold lasts only while more upserts are on their way: while this bridge's intake is answering
deliveries (or answered one less than ``INTAKE_IDLE_S`` ago, ``Traffic``) or running jobs have not
reached their upsert yet. When a burst of deliveries ends, its last upserts go at once beside the
request still in flight instead of waiting for its answer (the end of a burst of 300 deliveries
came ~10% sooner, ``bench/sync.py``). A bridge whose intake gets no deliveries (another instance
on the same PostgreSQL queue takes them) forms its batches from each claim, which waits while a
request is in flight (``worker.claim_interval_s``).

While the intake keeps answering deliveries, a batch that is not full also waits to fill with
nothing in flight, at most ``worker.batch_hold_s`` (100 ms), unless it is a lone upsert (the first
of a burst, or a delivery at idle, goes at once). Under a steady stream the batches then follow the
stream's rate, not the answers' round trip: WordPress pays its bootstrap for more users, and the
cores it leaves free go to the intake, whose answers take most of a burst (unchanged updates 5-6%
faster in three same-run A/B runs, README).

Why the rule: WordPress's bootstrap (~13 ms of CPU here) is paid per request, an unchanged user in
a batch costs ~0.8 ms. Without it, deliveries arriving a few at a time left a request slot free
for each few, and batches of 4 cost WordPress 4.1-5.2 ms of CPU per user against 1.3-1.4 ms in
batches of 25 (``bench/profile_sync.py`` and the README's benchmark section).

A plugin that does not advertise the feature (or ``worker.batch_size = 1``) gets single upserts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import structlog

from bridge.clients.wordpress import UpsertRequest, UpsertResult, WordPress, batch_limit
from bridge.errors import RemoteError
from bridge.tasks import TaskGroup

log = structlog.get_logger("bridge.batching")
# How long the plugin's answer about its batch feature is trusted (an upgrade or a downgrade of
# the plugin is noticed within this time).
FEATURE_TTL_S = 300.0
# After a failed status request, single upserts for this long before asking again (no extra
# request per job while WordPress is unreachable).
STATUS_RETRY_S = 10.0
# The longest a batch that is not full waits for another one in flight: a request that slow (a
# lock wait, a retry) is not one whose answer is worth waiting for.
PARTIAL_HOLD_MAX_S = 1.0
# Upserts carrying a password in one request, at most: each costs WordPress a hash or a check of
# it, which from WordPress 6.8 on is bcrypt (cost 10 ~65 ms here, cost 12 under PHP 8.4 ~300 ms:
# ../shared/reference/wordpress-throughput.md). 10 of them keep a request near 3 s at worst, within
# wordpress.timeout_s (15 s by default), however full the batch; the others go in the next one.
# Plugin 2.4.0 refuses more (status's batch.max_passwords, 10).
PASSWORD_ITEMS_MAX = 10
# The intake counts as busy this long after it answered its last delivery: a sender keeping
# requests in flight sends its next one well within it (0.1-0.5 ms here), and a pause this long
# is the end of a burst (A/B in the README's benchmark section).
INTAKE_IDLE_S = 0.002


class Traffic:
    """The deliveries this bridge's intake is answering: whether more upserts are on their way.

    The intake calls ``started()``/``finished()`` around each delivery; ``on_idle`` callbacks run
    ``idle_s`` after it answered its last one with none in progress, so a batch held for more can
    go.
    """

    def __init__(self, idle_s: float = INTAKE_IDLE_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self._monotonic = monotonic
        self.in_progress = 0
        self._last_done = float("-inf")
        self._on_idle: list[Callable[[], None]] = []

    def on_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the intake has gone idle."""
        self._on_idle.append(callback)

    def started(self) -> None:
        self.in_progress += 1

    def finished(self) -> None:
        self.in_progress -= 1
        self._last_done = self._monotonic()
        if self.in_progress == 0 and self._on_idle:
            asyncio.get_running_loop().call_later(self.idle_s, self._idle)

    def busy(self) -> bool:
        """A delivery in progress, or answered less than ``idle_s`` ago."""
        return self.in_progress > 0 or self._monotonic() - self._last_done < self.idle_s

    def _idle(self) -> None:
        if not self.busy():
            for callback in self._on_idle:
                callback()


class UpsertBatcher:
    """Gathers upserts into batch requests, at most ``max_in_flight`` requests at a time.

    ``wordpress``: the current client (a reload may replace it). ``waiting_jobs``: how many
    running jobs have not reached their upsert yet (a hint: only decides whether to linger).
    ``intake_busy``: whether this bridge's intake is answering deliveries (``Traffic.busy``), i.e.
    more upserts are on their way; ``wake()`` when it changes. A batch that is not full is held
    behind another one in flight only while it says so (always, without it), and waits to fill
    while it says so, at most ``busy_hold_s`` (never, without it).
    """

    def __init__(self, wordpress: Callable[[], WordPress], size: int, linger_s: float, max_in_flight: int,
                 waiting_jobs: Callable[[], int] = lambda: 0,
                 on_batch: Callable[[int], None] = lambda n: None,
                 monotonic: Callable[[], float] = time.monotonic,
                 intake_busy: Callable[[], bool] | None = None, busy_hold_s: float = 0.0) -> None:
        self._wordpress = wordpress
        self._size = size
        self._linger_s = linger_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting_jobs = waiting_jobs
        self._intake_busy = intake_busy
        self._busy_hold_s = busy_hold_s
        self._on_batch = on_batch
        self._monotonic = monotonic
        self._pending: list[tuple[UpsertRequest, asyncio.Future]] = []
        self._arrived = asyncio.Event()  # an upsert arrived or a request came back
        self._partial_in_flight = 0  # requests in flight whose batch was not full
        self._in_flight = 0
        self._limit: int | None = None
        self._limit_at = 0.0
        self._status_failed_at: float | None = None
        self._limit_lock = asyncio.Lock()
        self._tasks = TaskGroup()
        self._flushing = False
        self.submitted = 0  # upserts handed to a request (pending or in flight), for waiting_jobs

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self._in_flight

    @property
    def batch_size(self) -> int:
        """Upserts per request as far as known: 1 until the plugin said it takes batches."""
        return min(self._size, self._limit or 1)

    async def _batch_size_now(self) -> int:
        """The size, asking the plugin's status when the last answer is too old."""
        if self._size <= 1:
            return 1
        if self._status_failed_at is not None and self._monotonic() - self._status_failed_at < STATUS_RETRY_S:
            return self.batch_size
        if self._limit is None or self._monotonic() - self._limit_at > FEATURE_TTL_S:
            async with self._limit_lock:
                if self._limit is None or self._monotonic() - self._limit_at > FEATURE_TTL_S:
                    try:
                        self._limit = batch_limit(await self._wordpress().status())
                    except Exception as exc:  # WordPress unreachable: single upserts, which say why
                        self._status_failed_at = self._monotonic()
                        log.info("batching.status_failed", error=f"{type(exc).__name__}: {exc}")
                        return self.batch_size
                    self._status_failed_at = None
                    self._limit_at = self._monotonic()
                    log.info("batching.plugin", batch_limit=self._limit, batch_size=self.batch_size)
        return self.batch_size

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        """This upsert's result, sent alone or in a batch; raises its own typed error."""
        if await self._batch_size_now() <= 1:
            return await self._wordpress().upsert(request)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self.submitted += 1
        self._arrived.set()
        if not self._flushing:
            self._flushing = True
            self._tasks.spawn(self._flush(), "batching.flush")
        try:
            return await future
        finally:
            self.submitted -= 1

    async def _flush(self) -> None:
        """Send what is pending, batch after batch, until nothing is."""
        try:
            while self._pending:
                await self._slots.acquire()
                try:
                    await self._hold_partial()
                    await self._linger()
                    batch = self._take()
                except BaseException:
                    self._slots.release()
                    raise
                if batch:
                    self._tasks.spawn(self._send(batch), "batching.send")
                else:
                    self._slots.release()
        finally:
            self._flushing = False
            if self._pending:  # arrived while the loop was ending
                self._flushing = True
                self._tasks.spawn(self._flush(), "batching.flush")

    def wake(self) -> None:
        """Look again at what is pending (``intake_busy`` may have changed)."""
        self._arrived.set()

    async def _hold_partial(self) -> None:
        """While a batch that was not full is in flight and more upserts are on their way, wait for
        its answer or a full batch, at most PARTIAL_HOLD_MAX_S. Then, while the intake keeps
        answering deliveries, wait for a full batch at most ``busy_hold_s`` more, unless this
        upsert is alone with nothing in flight (the first of a burst, or a lone delivery)."""
        busy = self._intake_busy
        await self._wait_while(lambda: (self._partial_in_flight and len(self._pending) < self.batch_size
                                        and (busy is None or busy() or self._waiting_jobs() > 0)),
                               PARTIAL_HOLD_MAX_S)
        if busy is not None and self._busy_hold_s > 0:
            await self._wait_while(lambda: (len(self._pending) < self.batch_size and busy()
                                            and (self._in_flight > 0 or len(self._pending) > 1)),
                                   self._busy_hold_s)

    async def _linger(self) -> None:
        """Wait (up to linger_s) for running jobs still on their way, unless the batch is full."""
        await self._wait_while(lambda: len(self._pending) < self.batch_size and self._waiting_jobs() > 0,
                               self._linger_s)

    async def _wait_while(self, waiting: Callable[[], bool], max_s: float) -> None:
        """Wait for arrivals while ``waiting()`` holds, ``max_s`` at most."""
        deadline = self._monotonic() + max_s
        while waiting():
            left_s = deadline - self._monotonic()
            if left_s <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(left_s):
                    await self._arrived.wait()
            except TimeoutError:
                return

    def _take(self) -> list[tuple[UpsertRequest, asyncio.Future]]:
        """The next batch, oldest first, skipping upserts whose job gave up waiting (cancelled);
        at most PASSWORD_ITEMS_MAX of them carrying a password (the others wait for the next one:
        each job is its contact's only one in flight, so no contact's order changes)."""
        batch: list[tuple[UpsertRequest, asyncio.Future]] = []
        rest: list[tuple[UpsertRequest, asyncio.Future]] = []
        passwords = 0
        for item in self._pending:
            if item[1].done():
                continue
            heavy = item[0].password is not None
            if len(batch) < self.batch_size and not (heavy and passwords >= PASSWORD_ITEMS_MAX):
                batch.append(item)
                passwords += heavy
            else:
                rest.append(item)
        self._pending = rest
        return batch

    async def _send(self, batch: list[tuple[UpsertRequest, asyncio.Future]]) -> None:
        """One request; each future gets its item's result or error (all the request's error)."""
        partial = len(batch) < self.batch_size
        self._partial_in_flight += partial
        self._in_flight += 1
        try:
            if len(batch) == 1:
                outcomes: list = [await _settle(self._wordpress().upsert(batch[0][0]))]
            else:
                self._on_batch(len(batch))
                answered = await _settle(self._wordpress().upsert_batch([r for r, _ in batch]))
                outcomes = answered if isinstance(answered, list) else [answered] * len(batch)
            for (_, future), outcome in zip(batch, outcomes):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        finally:
            self._partial_in_flight -= partial
            self._in_flight -= 1
            self._arrived.set()
            self._slots.release()

    async def close(self) -> None:
        """Cancel what is still being sent (the jobs waiting on it are being cancelled too)."""
        await self._tasks.cancel()


async def _settle(call) -> UpsertResult | list[UpsertResult | RemoteError] | BaseException:
    """The call's value, or the exception it raised (handed to the waiting jobs)."""
    try:
        return await call
    except Exception as exc:  # each waiting job records it as its own failure
        return exc
