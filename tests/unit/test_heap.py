"""The daemon's heap once started: start-up's objects frozen out of the cyclic collector's view and
the youngest generation collected less often (``bridge.app.settle_heap``), which ``Bridge.run``
does after a successful start."""

import asyncio
import gc
import os
import signal

import pytest

from bridge import app
from bridge.app import GC_GEN0_THRESHOLD, Bridge, settle_heap
from bridge.settings import load_settings


@pytest.fixture
def gc_state():
    """The collector as it was before the test, put back after it."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_heap_freezes_what_lives_and_raises_the_youngest_threshold(gc_state):
    _, older, oldest = gc.get_threshold()
    kept = [object() for _ in range(10)]  # alive at the call: frozen with the rest
    settle_heap()
    assert gc.get_freeze_count() > len(kept)
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, older, oldest)


async def test_run_settles_the_heap_once_started_and_not_before(tmp_path, monkeypatch, gc_state):
    events: list[str] = []

    async def start(self):
        events.append("start")

    async def stop(self):
        events.append("stop")

    monkeypatch.setattr(Bridge, "start", start)
    monkeypatch.setattr(Bridge, "stop", stop)
    monkeypatch.setattr(app, "settle_heap", lambda: events.append("settle"))
    bridge = Bridge(load_settings(None, database={"path": str(tmp_path / "h.db")}))
    running = asyncio.ensure_future(bridge.run())

    async def settled() -> None:
        while "settle" not in events:
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(settled(), 5)
    except TimeoutError:
        running.cancel()
        raise AssertionError(f"run() started without settling the heap: {events}") from None
    os.kill(os.getpid(), signal.SIGINT)  # run()'s own handler: stop
    await asyncio.wait_for(running, 5)
    assert events == ["start", "settle", "stop"]
