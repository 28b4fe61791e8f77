"""The worker: claims due jobs (oldest first, one per contact at a time), runs them concurrently,
and records the result: done, retry later (queue backoff, minutes to hours), or dead.

tenacity retries for seconds inside a run (``bridge.clients.http.retrying``); this module retries
for minutes and hours across runs (STYLE.md §3). A worker never sleeps for minutes: a job that must
wait goes back to the queue with a ``run_at``.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Callable

import structlog

from bridge.batching import UpsertBatcher
from bridge.errors import Permanent, RateLimited, Transient
from bridge.metrics import Metrics
from bridge.store import queue as q
from bridge.store.jobs import JobStore
from bridge.store.queue import Job
from bridge.sync import SyncContext, run_job
from bridge.tasks import TaskGroup

log = structlog.get_logger("bridge.worker")


def backoff_s(attempt: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter for the ``attempt``-th failure (1-based)."""
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return ceiling / 2 + rand() * ceiling / 2


class Worker:
    """Runs the queue until ``stop()``; ``notify()`` wakes it when a job arrives."""

    def __init__(self, ctx: SyncContext, store: JobStore, metrics: Metrics) -> None:
        self.ctx = ctx
        self.store = store
        self.metrics = metrics
        self.cfg = ctx.settings.worker
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: dict[int, Job] = {}
        self._jobs = TaskGroup()
        self._loops = TaskGroup()
        # worker.concurrency counts WordPress requests in flight; each may carry a batch of upserts.
        self.batcher = ctx.batcher = UpsertBatcher(
            lambda: ctx.wordpress, self.cfg.batch_size, self.cfg.batch_linger_s, self.cfg.concurrency,
            waiting_jobs=lambda: len(self._running) - self.batcher.submitted, on_batch=metrics.wordpress_batch)

    @property
    def slots(self) -> int:
        """How many jobs may run at once: a request's worth of upserts per request slot."""
        return self.cfg.concurrency * self.batcher.batch_size

    def notify(self) -> None:
        """A job was queued: look for work now rather than at the next poll. With every slot busy
        there is nothing to claim (the intake calls this once per delivery): the next job to
        finish wakes the dispatcher instead."""
        if len(self._running) < self.slots:
            self._wake.set()

    async def start(self) -> None:
        """Put back jobs a previous process left running, then start the loops."""
        released = await self.store.release_running(expired_only=False)
        if released:
            log.info("worker.recovered", jobs=released)
        self._loops.spawn(self._dispatch(), "worker.dispatch")
        self._loops.spawn(self._maintain(), "worker.maintain")

    async def stop(self, grace_s: float) -> None:
        """Stop claiming, let running jobs finish within ``grace_s``, leave the rest queued."""
        self._stopping.set()
        self._wake.set()
        await self._loops.cancel()
        finished = await self._jobs.wait(grace_s)
        if not finished:
            log.warning("worker.grace_expired", unfinished=sorted(self._running))
            await self._jobs.cancel()
            await self.store.release_running(expired_only=False)
        await self.batcher.close()

    @property
    def loops_alive(self) -> bool:
        """Both loops (dispatch, maintenance) are running: what the systemd watchdog vouches for."""
        return len(self._loops) == 2 and not self._stopping.is_set()

    @property
    def running(self) -> int:
        return len(self._running)

    async def _dispatch(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            free = self.slots - len(self._running)
            if free > 0:
                for job in await self.store.claim(free, self.cfg.lease_s):
                    self._running[job.id] = job
                    self._jobs.spawn(self._run(job), f"job.{job.id}")
            # Every finished job and every new delivery sets the event; the poll catches run_at.
            await _wait(self._wake, self.cfg.poll_interval_s)

    async def _run(self, job: Job) -> None:
        bound = log.bind(job_id=job.id, connection=job.connection, action=job.effective_action, attempt=job.attempts)
        started = time.monotonic()
        error: Exception | None = None
        try:
            outcome = await run_job(self.ctx, job)
        except asyncio.CancelledError:
            self._running.pop(job.id, None)
            raise
        except Exception as exc:  # every failure is recorded on the job, none kills the worker
            error = exc
        # The remote work is over: free the slot before recording the result, so the next claim
        # can share its commit. Order still holds: until the result is committed this job is
        # 'running' in the database, which keeps its contact's next job unclaimable.
        self._running.pop(job.id, None)
        self._wake.set()
        if error is not None:
            await self._failed(job, error, bound)
        else:
            await self.store.finish(job, outcome)
            self.metrics.job_done(job.connection, outcome.get("outcome", "done"), time.monotonic() - started)
            bound.info("job.done", outcome=outcome.get("outcome"), user_id=outcome.get("user_id"),
                       coalesced=len(job.merged) or None, warnings=outcome.get("warnings") or None)
        self._wake.set()

    async def _failed(self, job: Job, exc: Exception, bound: Any) -> None:
        error = f"{type(exc).__name__}: {exc}"
        retryable = isinstance(exc, Transient) or not isinstance(exc, Permanent)
        if not isinstance(exc, (Transient, Permanent)):
            bound.error("job.crashed", error=error, exc_info=exc)
        if retryable and job.attempts < self.cfg.max_attempts:
            delay_s = backoff_s(job.attempts, self.cfg.retry_base_s, self.cfg.retry_max_s)
            if isinstance(exc, RateLimited) and exc.retry_after_s:
                delay_s = max(delay_s, exc.retry_after_s)
            await self.store.retry_later(job, self.store.clock() + delay_s, error)
            self.metrics.job_retry(job.connection)
            bound.warning("job.retry_scheduled", error=error, delay_s=round(delay_s, 1))
        else:
            reason = error if not retryable else f"gave up after {job.attempts} attempts: {error}"
            await self.store.bury(job, reason)
            self.metrics.job_dead(job.connection)
            bound.error("job.dead", error=reason)

    async def _maintain(self) -> None:
        """Renew leases of running jobs, requeue expired ones, prune old done jobs."""
        interval_s = max(0.5, self.cfg.lease_s / 3)
        window_s = self.ctx.settings.server.dedupe_window_s

        while not self._stopping.is_set():
            await _wait(self._stopping, interval_s)
            if self._running:
                ids = [i for job in list(self._running.values()) for i in (job.id, *job.merged)]
                await self.store.renew(ids, self.cfg.lease_s)
            await self.store.release_running(expired_only=True)
            removed = await self.store.call(q.prune, self.store.clock(), self.cfg.done_retention_s, window_s)
            if any(removed):
                log.info("queue.pruned", jobs=removed[0], dedupe_keys=removed[1])


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Until ``event`` is set or ``timeout_s`` has passed (under asyncio.timeout: unlike wait_for,
    no task per wait)."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        pass
