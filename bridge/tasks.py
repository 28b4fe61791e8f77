"""Background tasks are created here only: references are kept (asyncio holds weak ones) and a
task that dies of an error is logged instead of vanishing."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

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
