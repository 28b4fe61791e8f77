"""``bridge.batching.Traffic``: the intake's deliveries in progress, and the moment it goes idle
(when a batch held for more upserts may go)."""

from __future__ import annotations

import asyncio

from bridge.batching import Traffic


async def test_busy_while_a_delivery_is_in_progress_and_shortly_after():
    traffic = Traffic(idle_s=0.05)
    assert not traffic.busy()
    traffic.started()
    traffic.started()
    traffic.finished()
    assert traffic.busy() and traffic.in_progress == 1
    await asyncio.sleep(0.08)
    assert traffic.busy()  # one still in progress, however long ago the other ended
    traffic.finished()
    assert traffic.busy()  # answered just now
    await asyncio.sleep(0.08)
    assert not traffic.busy()


async def test_the_idle_callbacks_run_once_the_intake_has_gone_quiet():
    traffic = Traffic(idle_s=0.03)
    calls: list[str] = []
    traffic.on_idle(lambda: calls.append("idle"))
    traffic.started()
    traffic.finished()
    assert calls == []
    traffic.started()  # the next delivery arrives before the pause is long enough
    await asyncio.sleep(0.06)
    assert calls == []  # its timer found the intake busy again
    traffic.finished()
    await asyncio.sleep(0.01)
    assert calls == []
    await asyncio.sleep(0.05)
    assert calls == ["idle"]
