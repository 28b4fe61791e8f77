"""Background tasks are created here only: references are kept (asyncio holds weak ones) and a
task that dies of an error is logged instead of vanishing. Loops run behind ``guarded``, an error
boundary that logs, backs off and carries on, and reports each loop's health (``LoopHealth``)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Coroutine

import structlog

log = structlog.get_logger("bridge.tasks")


class TaskGroup:
    """A set of named background tasks that can be cancelled and awaited together."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Start ``coro`` as a task that is kept and whose failure is logged."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("task.failed", task=task.get_name(), error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout_s: float | None) -> bool:
        """Wait for every task to end; True when all did within the timeout."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        return not pending

    async def cancel(self) -> None:
        """Cancel every task and wait for them to finish cancelling."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class LoopHealth:
    """Whether each background loop's last round went through, for ``/readyz`` and ``/metrics``."""

    def __init__(self) -> None:
        self.healthy: dict[str, bool] = {}
        self.errors: dict[str, str] = {}
        self.failures: dict[str, int] = {}

    def ok(self, name: str) -> None:
        self.healthy[name] = True
        self.errors.pop(name, None)

    def failed(self, name: str, exc: BaseException) -> None:
        self.healthy[name] = False
        self.errors[name] = f"{type(exc).__name__}: {exc}"
        self.failures[name] = self.failures.get(name, 0) + 1

    @property
    def all_ok(self) -> bool:
        return all(self.healthy.values())


def backoff_capped_s(failures: int, base_s: float, max_s: float) -> float:
    """Doubling from ``base_s`` per consecutive failure, at most ``max_s``."""
    return min(max_s, base_s * 2 ** max(0, failures - 1))


async def guarded(name: str, step: Callable[[], Awaitable[Any]], health: LoopHealth, stopping: asyncio.Event,
                  base_s: float = 0.5, max_s: float = 30.0) -> None:
    """Run ``step`` until ``stopping`` is set, behind an error boundary: a failing round is logged
    (one ``loop.failed`` event), marks the loop unhealthy and is retried after a capped backoff;
    the first round that goes through again logs ``loop.recovered``. (``step`` does its own wait.)"""
    failures = 0
    while not stopping.is_set():
        try:
            await step()
        except Exception as exc:  # the boundary: nothing ends the loop but stop()
            failures += 1
            health.failed(name, exc)
            delay_s = backoff_capped_s(failures, base_s, max_s)
            log.error("loop.failed", loop=name, error=f"{type(exc).__name__}: {exc}", failures=failures,
                      retry_in_s=round(delay_s, 2))
            try:
                async with asyncio.timeout(delay_s):
                    await stopping.wait()
            except TimeoutError:
                pass
            continue
        if failures:
            log.info("loop.recovered", loop=name, failures=failures)
            failures = 0
        health.ok(name)
