"""The database writer commits the calls a sender waits on (a delivery's enqueue, whose commit its
2xx waits for) ahead of the other calls read with them (bridge.store.writer.answer_first)."""

from __future__ import annotations

import asyncio
import json

from bridge.store import aliases
from bridge.store import queue as q
from bridge.store.jobs import JobStore
from bridge.store.writer import answer_first


def test_a_read_with_an_enqueue_among_other_calls_commits_the_enqueue_first():
    calls = [(1, q.finish, ()), (2, aliases.enqueue_contact, ()), (3, q.claim, ()), (4, q.enqueue, ())]
    assert answer_first(calls) == [[calls[1], calls[3]], [calls[0], calls[2]]]


def test_a_read_of_one_kind_is_one_transaction():
    enqueues = [(1, aliases.enqueue_contact, ()), (2, q.enqueue, ())]
    others = [(3, q.finish, ()), (4, q.claim, ())]
    assert answer_first(enqueues) == [enqueues]
    assert answer_first(others) == [others]


async def test_a_deliverys_commit_is_answered_before_the_finished_jobs_sent_with_it(tmp_path):
    """A hundred finished jobs and a new delivery in one frame to the real writer process: the
    delivery's answer comes back while none of the hundred is answered yet; all are committed."""
    store = JobStore.open(tmp_path / "order.db")
    try:
        queued = await asyncio.gather(*[
            store.enqueue_contact(f"key-{i}", 60, "c", "update", None, f"u{i}@example.com",
                                  json.dumps({"i": i}))
            for i in range(100)])
        assert len(queued) == 100
        jobs = await store.claim(100, 60)
        assert len(jobs) == 100
        now = store.clock()
        finishes = [store._writer.run(q.finish, now, job, {"outcome": "unchanged"}) for job in jobs]
        delivery = store.enqueue_contact("key-new", 60, "c", "update", None, "new@example.com", "{}")
        answered_before = []
        delivery.add_done_callback(lambda _: answered_before.append(sum(f.done() for f in finishes)))
        job_id, duplicate, _ = await delivery
        assert await asyncio.gather(*finishes) == [True] * 100
        assert answered_before == [0] and not duplicate
        assert store.reader is not None
        counts = await store.reader.run(q.counts)
        assert counts.get("done") == 100 and counts.get("queued") == 1, counts
    finally:
        store.close()
