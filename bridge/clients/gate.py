"""A per-service pause: after a 429 (or a 503 with Retry-After), no call goes to that service until
the time it asked for has passed, whichever job makes the call. Timed on the monotonic clock."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import structlog

from bridge.errors import RateLimited

log = structlog.get_logger("bridge.clients")
# A 429 without Retry-After still pauses the service for this long.
DEFAULT_PAUSE_S = 1.0


class RateGate:
    """Shut for a while when the service says so; every caller waits at ``enter`` until it opens."""

    def __init__(self, service: str, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.monotonic = monotonic
        self._open_at = 0.0

    def remaining_s(self) -> float:
        """Seconds until the gate opens (0 when open)."""
        return max(0.0, self._open_at - self.monotonic())

    def shut(self, exc: RateLimited) -> None:
        """The service answered ``exc``: no call until its Retry-After (or DEFAULT_PAUSE_S) is over."""
        pause_s = exc.retry_after_s if exc.retry_after_s else DEFAULT_PAUSE_S
        open_at = self.monotonic() + pause_s
        if open_at > self._open_at:
            if self.remaining_s() == 0:
                log.warning("crm.paused", service=self.service, pause_s=round(pause_s, 1))
            self._open_at = open_at

    async def enter(self, max_wait_s: float) -> None:
        """Wait until the gate is open. A wait longer than ``max_wait_s`` is not done here: it raises
        RateLimited with the time left, so the job goes back to the queue until then."""
        while (left_s := self.remaining_s()) > 0:
            if left_s > max_wait_s:
                raise RateLimited(self.service, f"paused for {left_s:.0f} s more (an earlier Retry-After)",
                                  left_s)
            await asyncio.sleep(left_s)
