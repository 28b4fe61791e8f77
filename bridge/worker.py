"""The worker: claims due jobs (oldest first, one per contact at a time), runs them concurrently,
and records the result: done, retry later (queue backoff, minutes to hours), or dead.

tenacity retries for seconds inside a run (``bridge.clients.http.retrying``); this module retries
for minutes and hours across runs (STYLE.md §3). A worker never sleeps for minutes: a job that must
wait goes back to the queue with a ``run_at``.

Nothing stops it quietly: the dispatch and maintenance loops run behind an error boundary
(``bridge.tasks.guarded``: log, back off, go on), and a result that cannot be written (database
unwritable, writer process gone) is kept in memory and written again with a capped backoff, so
the work already done is recorded rather than repeated. ``health`` says which of these is failing
(``/readyz``, ``wpsb_loop_healthy``). Each run has a deadline (``worker.job_timeout_s``, monotonic)
and its writes are fenced by owner and attempt (``bridge.store.leases``).
"""

from __future__ import annotations

import asyncio
import random
import time
import traceback
from functools import partial
from typing import Any, Awaitable, Callable

import structlog

from bridge.batching import Traffic, UpsertBatcher
from bridge.errors import Permanent, RateLimited, Transient
from bridge.logs import scrub_text
from bridge.metrics import Metrics
from bridge.store import queue as q
from bridge.store.jobs import FencedOut, JobStore
from bridge.store.leases import LeaseWatch
from bridge.store.queue import Job
from bridge.sync import SyncContext, run_job
from bridge.tasks import LoopHealth, TaskGroup, backoff_capped_s, guarded

log = structlog.get_logger("bridge.worker")
RECORD_BACKOFF_BASE_S = 0.5


def backoff_s(attempt: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter for the ``attempt``-th failure (1-based)."""
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return ceiling / 2 + rand() * ceiling / 2


class Worker:
    """Runs the queue until ``stop()``; ``notify()`` wakes it when a job arrives."""

    def __init__(self, ctx: SyncContext, store: JobStore, metrics: Metrics, health: LoopHealth | None = None,
                 monotonic: Callable[[], float] = time.monotonic, traffic: Traffic | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.metrics = metrics
        self.cfg = ctx.settings.worker
        self.health = health if health is not None else LoopHealth()
        self.monotonic = monotonic
        self.leases = LeaseWatch(self.cfg.lease_s, monotonic)
        # WordPress unreachable: no claims until a probe gets through (see _dispatch_once).
        self.paused = False
        self._probe_failures = 0
        self._next_probe = 0.0
        # A claim that raised (the writer died, the database connection broke, the call was
        # cancelled) may have committed with its answer lost: its jobs are running for nobody.
        # Only the claim after such a one sends the jobs this process runs (``keep``), so that
        # the store puts the others back; the rest skip that scan of the running jobs.
        self._claim_unsure = False
        # Bound once (after logging is configured; again on reload, bridge.app), not per job
        # through the lazy proxy, which builds a logger each time.
        self.log = log.bind()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: dict[int, Job] = {}
        self._recording: dict[int, Job] = {}  # remote work over, result not yet written
        self._record_failing: set[int] = set()
        self._jobs = TaskGroup()
        self._loops = TaskGroup()
        self._secrets = set(ctx.settings.secret_values())  # grows on reload: an old token may still echo
        # worker.concurrency counts WordPress requests in flight; each may carry a batch of upserts.
        self.batcher = ctx.batcher = UpsertBatcher(
            lambda: ctx.wordpress, self.cfg.batch_size, self.cfg.batch_linger_s, self.cfg.concurrency,
            waiting_jobs=lambda: len(self._running) - self.batcher.submitted,
            on_batch=metrics.wordpress_batch,
            intake_busy=traffic.busy if traffic is not None else None, busy_hold_s=self.cfg.batch_hold_s)
        if traffic is not None:
            traffic.on_idle(self.batcher.wake)

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
        released = await self.store.release_running()
        if released:
            log.info("worker.recovered", jobs=released)
        cap_s = self.cfg.loop_backoff_max_s
        self._loops.spawn(guarded("dispatch", self._dispatch_once, self.health, self._stopping, max_s=cap_s),
                          "worker.dispatch")
        self._loops.spawn(guarded("maintain", self._maintain_once, self.health, self._stopping, max_s=cap_s),
                          "worker.maintain")

    async def stop(self, grace_s: float) -> None:
        """Stop claiming, let running jobs finish within ``grace_s``, leave the rest queued."""
        self._stopping.set()
        self._wake.set()
        await self._loops.cancel()
        finished = await self._jobs.wait(grace_s)
        if not finished:
            log.warning("worker.grace_expired", unfinished=sorted({*self._running, *self._recording}))
            await self._jobs.cancel()
            try:
                await self.store.release_running()
            except Exception as exc:  # the next start puts them back instead
                log.error("worker.release_failed", error=f"{type(exc).__name__}: {exc}")
        await self.batcher.close()

    @property
    def loops_alive(self) -> bool:
        """Both loops (dispatch, maintenance) are running: what the systemd watchdog vouches for."""
        return len(self._loops) == 2 and not self._stopping.is_set()

    @property
    def running(self) -> int:
        return len(self._running)

    def held_ids(self) -> list[int]:
        """Every job this process runs or is recording, merged ones included (its leases)."""
        jobs = [*self._running.values(), *self._recording.values()]
        return [i for job in jobs for i in (job.id, *job.merged)]

    async def _dispatch_once(self) -> None:
        self._wake.clear()
        if self.paused and not await self._probe():
            return
        free = self.slots - len(self._running)
        if free > 0:
            keep = self.held_ids() if self._claim_unsure else None
            self._claim_unsure = True
            try:
                claimed = await self.store.claim(free, self.cfg.lease_s, keep=keep)
            except Exception:
                self.metrics.claim_failed()
                raise
            self._claim_unsure = False
            for job in claimed:
                self._running[job.id] = job
                self._jobs.spawn(self._run(job), f"job.{job.id}")
        # Every finished job and every new delivery sets the event; the poll catches run_at.
        await _wait(self._wake, self.cfg.poll_interval_s)
        if self.cfg.claim_interval_s and self.batcher.in_flight:
            # A job claimed now would wait for the request in flight anyway (bridge.batching's
            # Nagle rule); claiming a few at a time, one commit each, only costs the writer and
            # the loop what the intake needs (bench/sync.py, README). A wake-up meanwhile stays set.
            await _wait(self._stopping, self.cfg.claim_interval_s)

    def _pause(self, error: str) -> None:
        """A job found WordPress unreachable: stop claiming (waiting jobs keep their attempts and
        WordPress gets probes instead of jobs) until a probe gets through."""
        if not self.paused:
            self.paused, self._probe_failures = True, 0
            self._next_probe = self.monotonic() + 1.0
            log.warning("worker.paused", reason=error)

    async def _probe(self) -> bool:
        """While paused: ask WordPress for its status when the backoff (1 s doubling to
        ``worker.outage_probe_max_s``) allows; True, and dispatch resumes, once it answers."""
        wait_s = self._next_probe - self.monotonic()
        if wait_s > 0:
            await _wait(self._stopping, min(wait_s, self.cfg.poll_interval_s))
            return False
        try:
            await self.ctx.wordpress.status()
        except Exception as exc:  # still down: probe later
            self._probe_failures += 1
            delay_s = backoff_capped_s(self._probe_failures, 1.0, self.cfg.outage_probe_max_s)
            self._next_probe = self.monotonic() + delay_s
            self.health.failed("wordpress_probe", exc)
            log.info("worker.probe_failed", error=f"{type(exc).__name__}: {exc}", probes=self._probe_failures,
                     next_probe_s=round(delay_s, 1))
            return False
        self.paused = False
        self.health.ok("wordpress_probe")
        log.info("worker.resumed", probes=self._probe_failures + 1)
        return True

    async def _run(self, job: Job) -> None:
        bound = self.log.bind(job_id=job.id, connection=job.connection, action=job.effective_action,
                         attempt=job.attempts)
        started = time.monotonic()
        error: Exception | None = None
        deadline = asyncio.timeout(self.cfg.job_timeout_s)
        try:
            async with deadline:
                outcome = await run_job(self.ctx, job)
        except asyncio.CancelledError:
            self._running.pop(job.id, None)
            raise
        except FencedOut:  # another run owns the job now; this one has nothing left to say
            self._running.pop(job.id, None)
            self._wake.set()
            return
        except TimeoutError as exc:
            limit = f"the run took longer than worker.job_timeout_s ({self.cfg.job_timeout_s:g} s)"
            error = Transient("bridge", limit) if deadline.expired() else exc
        except Exception as exc:  # every failure is recorded on the job, none kills the worker
            error = exc
        # The remote work is over: free the slot before recording the result, so the next claim
        # can share its commit. Order still holds: until the result is committed this job is
        # 'running' in the database, which keeps its contact's next job unclaimable.
        self._recording[job.id] = self._running.pop(job.id)
        self._wake.set()
        try:
            if error is not None:
                await self._failed(job, error, bound)
            elif await self._record(job, bound, "finish", lambda: self.store.finish(job, outcome)):
                self.metrics.job_done(job.connection, outcome.get("outcome", "done"),
                                      time.monotonic() - started)
                bound.info("job.done", outcome=outcome.get("outcome"), user_id=outcome.get("user_id"),
                           coalesced=len(job.merged) or None, warnings=outcome.get("warnings") or None)
        finally:
            self._recording.pop(job.id, None)
        self._wake.set()

    async def _record(self, job: Job, bound: Any, what: str, write: Callable[[], Awaitable[bool]]) -> bool:
        """Write a run's result, again and again (capped backoff) until the database takes it:
        the remote work is done and must not be repeated for want of a row update. False when
        the write was fenced out (see ``bridge.store.leases``)."""
        failures = 0
        while True:
            try:
                ok = await write()
            except Exception as exc:  # database unwritable, writer gone: keep the result, try again
                failures += 1
                self._record_failing.add(job.id)
                self.health.failed("record", exc)
                self.metrics.finish_failed()
                delay_s = backoff_capped_s(failures, RECORD_BACKOFF_BASE_S, self.cfg.loop_backoff_max_s)
                bound.error("job.record_failed", write=what, error=f"{type(exc).__name__}: {exc}",
                            failures=failures, retry_in_s=round(delay_s, 2))
                await asyncio.sleep(delay_s)
                continue
            if failures:
                bound.info("job.record_recovered", write=what, failures=failures)
                self._record_failing.discard(job.id)
                if not self._record_failing:
                    self.health.ok("record")
            return ok

    def _exhausted(self, job: Job) -> str | None:
        """Why a retryable job gets no more retries: its age past ``worker.retry_budget_s`` (counted
        from its arrival or requeue), or ``worker.max_attempts`` runs when that is set."""
        if self.cfg.max_attempts is not None and job.attempts >= self.cfg.max_attempts:
            return f"gave up after {job.attempts} attempts"
        age_s = self.store.clock() - job.budget_from
        if age_s >= self.cfg.retry_budget_s:
            return f"gave up after {age_s / 3600:.1f} h of retries ({job.attempts} attempts)"
        return None

    async def _failed(self, job: Job, exc: Exception, bound: Any) -> None:
        # The clients already scrub what they sent; this is the second guard before the error is
        # stored in last_error (shown by `jobs list/show`) and logged: no configured secret and
        # not the job's generated password.
        self._secrets.update(self.ctx.settings.secret_values())
        error = scrub_text(f"{type(exc).__name__}: {exc}", (*self._secrets, job.secret))
        retryable = isinstance(exc, Transient) or not isinstance(exc, Permanent)
        if not isinstance(exc, (Transient, Permanent)):
            trace = "".join(traceback.format_exception(exc))
            bound.error("job.crashed", error=error, exception=scrub_text(trace, (*self._secrets, job.secret)))
        if isinstance(exc, Transient) and exc.service.startswith("wordpress"):
            self._pause(error)
        gave_up = self._exhausted(job) if retryable else None
        if retryable and gave_up is None:
            delay_s = backoff_s(job.attempts, self.cfg.retry_base_s, self.cfg.retry_max_s)
            if isinstance(exc, RateLimited) and exc.retry_after_s:
                delay_s = max(delay_s, exc.retry_after_s)
            retry = partial(self.store.retry_later, job, self.store.clock() + delay_s, error)
            if await self._record(job, bound, "retry_later", retry):
                self.metrics.job_retry(job.connection)
                bound.warning("job.retry_scheduled", error=error, delay_s=round(delay_s, 1))
        else:
            reason = error if not retryable else f"{gave_up}: {error}"
            if await self._record(job, bound, "bury", lambda: self.store.bury(job, reason)):
                self.metrics.job_dead(job.connection)
                bound.error("job.dead", error=reason)

    async def _maintain_once(self) -> None:
        """Renew this process's leases, expire peers' dead ones, prune old done jobs, and dead jobs
        and rejected deliveries past their retention or cap."""
        await _wait(self._stopping, max(0.5, self.cfg.lease_s / 3))
        if self._stopping.is_set():
            return
        ids = self.held_ids()
        if ids:
            await self.store.renew(ids, self.cfg.lease_s)
        await self.store.expire_peer_leases(self.leases)
        removed = await self.store.call(q.prune, self.store.clock(), self.cfg.done_retention_s,
                                        self.ctx.settings.server.dedupe_window_s)
        if any(removed):
            log.info("queue.pruned", jobs=removed[0], dedupe_keys=removed[1])
        await self._prune_untrusted()

    async def _prune_untrusted(self) -> None:
        """Dead jobs and rejected deliveries past their retention or cap (settings.worker)."""
        c = self.cfg
        dead, rejected = await self.store.call(q.prune_untrusted, self.store.clock(), c.dead_retention_s,
                                               c.dead_max_jobs, c.rejected_retention_s, c.rejected_max_rows)
        if dead or rejected:
            log.info("queue.pruned_untrusted", dead_jobs=dead, rejected=rejected)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Until ``event`` is set or ``timeout_s`` has passed (under asyncio.timeout: unlike wait_for,
    no task per wait)."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        pass
