"""Contact links on a real SQLite file (bridge.store.aliases): one person's email-keyed and ID-keyed
deliveries become one line, in arrival order, with one run at a time; two people are never merged."""

import itertools
import json

import pytest

from bridge.store.jobs import JobStore

_serial = itertools.count()


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The store under test, on each backend (the same SQL: bridge.store.pgdb)."""
    if request.param == "postgresql":
        from bridge.store.pgjobs import PgJobStore

        s = PgJobStore.open(request.getfixturevalue("pg_url"), clock=Clock())
    else:
        s = JobStore.open(tmp_path / "q.db", clock=Clock())
    yield s
    s.close()


async def put(store, contact_id=None, email=None, action="update"):
    """Queue a distinct delivery naming ``contact_id`` and/or ``email``: (job_id, link event)."""
    n = next(_serial)
    payload = json.dumps({"contact_id": contact_id, "email": email, "n": n})
    job_id, duplicate, event = await store.enqueue_contact(f"k{n}", 3600, "c", action, contact_id, email,
                                                           payload)
    assert duplicate is False
    return job_id, event


async def key_of(store, job_id):
    return (await store.get_job(job_id))["contact_key"]


async def test_an_email_only_delivery_after_the_link_waits_behind_the_id_line(store):
    """Once a delivery carried both, a delivery naming only the (case-folded) email is keyed by the ID."""
    first, event = await put(store, "123", "Bob@Example.com", "add")
    later, _ = await put(store, None, "bob@EXAMPLE.com")
    assert event == "new" and await key_of(store, later) == "c:id:123"
    [job] = await store.claim(10, 60)
    assert (job.id, job.merged) == (first, [later])


async def test_learning_the_link_joins_both_lines_in_arrival_order(store):
    """An email-keyed and an ID-keyed job queued before the link are two heads; the link makes them
    one line whose head is the oldest, and the job that carried the link comes last."""
    by_email, _ = await put(store, None, "ada@example.com", "delete")
    by_id, _ = await put(store, "A1", None, "delete")
    linking, event = await put(store, "A1", "ada@example.com", "delete")
    assert event == "new"
    order = []
    while jobs := await store.claim(10, 60):
        assert len(jobs) == 1  # never two runs of one person
        order.append(jobs[0].id)
        await store.finish(jobs[0], {"outcome": "ignored"})
    assert order == [by_email, by_id, linking]
    assert {await key_of(store, i) for i in order} == {"c:id:A1"}


async def test_a_job_in_flight_on_the_email_key_keeps_the_line_until_it_ends(store):
    """The email-keyed job running when the link is learned moves with its line and stays its only
    head: the linking job waits, then runs once that job is done (finish advances its new line)."""
    running, _ = await put(store, None, "eve@example.com")
    [job] = await store.claim(10, 60)
    linking, event = await put(store, "E7", "eve@example.com")
    assert event == "new" and await key_of(store, running) == "c:id:E7"
    assert await store.claim(10, 60) == []
    await store.finish(job, {"outcome": "updated"})
    [nxt] = await store.claim(10, 60)
    assert nxt.id == linking


async def test_a_dead_job_requeued_after_the_link_joins_the_id_line(store):
    """Done and dead jobs move with the link: a requeue puts the dead one back in the person's one line."""
    dead, _ = await put(store, None, "dan@example.com", "delete")
    [job] = await store.claim(10, 60)
    await store.bury(job, "Permanent: x")
    waiting, _ = await put(store, "D4", "dan@example.com", "delete")
    [running] = await store.claim(10, 60)
    assert running.id == waiting
    from bridge.store import queue as q
    assert await store.call(q.requeue, store.clock(), dead)
    assert await store.claim(10, 60) == []  # behind the running one, in the same line
    await store.finish(running, {"outcome": "ignored"})
    [again] = await store.claim(10, 60)
    assert again.id == dead and await key_of(store, dead) == "c:id:D4"


async def test_two_jobs_in_flight_defer_the_link_until_one_ends(store):
    """Both keys running: the link is not learned (two runs cannot hold one line); the next
    delivery carrying both learns it once at most one of them runs."""
    await put(store, None, "ida@example.com")
    await put(store, "I9", None)
    e_job, i_job = await store.claim(10, 60)
    deferred, event = await put(store, "I9", "ida@example.com")
    assert event == "deferred" and await key_of(store, deferred) == "c:id:I9"
    email_only, _ = await put(store, None, "ida@example.com")
    assert await key_of(store, email_only) == "c:email:ida@example.com"
    await store.finish(e_job, {"outcome": "updated"})
    _, event = await put(store, "I9", "ida@example.com")
    assert event == "new" and await key_of(store, email_only) == "c:id:I9"


async def test_one_email_named_by_two_contact_ids_is_never_merged(store):
    """A second ID for a linked email is refused: the email becomes contested, each ID keeps its
    line, and the email's own deliveries keep the email key from then on."""
    await put(store, "P1", "shared@example.com")
    _, event = await put(store, "P2", "shared@example.com")
    assert event == "conflict"
    _, event = await put(store, "P1", "shared@example.com")
    assert event == "contested"
    email_only, _ = await put(store, None, "shared@example.com")
    assert await key_of(store, email_only) == "c:email:shared@example.com"
    jobs = await store.claim(10, 60)
    assert sorted(j.contact_key for j in jobs) == ["c:email:shared@example.com", "c:id:P1", "c:id:P2"]


async def test_a_run_finding_a_new_email_unlinks_the_old_one(store):
    """The CRM's record (a run's finding) is the contact's current email: the changed-from email
    no longer names the contact, the new one does; learning it again writes nothing."""
    await put(store, "C3", "old@example.com")
    assert await store.learn_link("c", "C3", "New@example.com") == "new"
    assert await store.learn_link("c", "C3", "new@example.com") is None  # settled: read only
    old, _ = await put(store, None, "old@example.com")
    new, _ = await put(store, None, "new@example.com")
    assert (await key_of(store, old), await key_of(store, new)) == ("c:email:old@example.com", "c:id:C3")


async def test_links_are_per_connection_and_ids_that_are_emails_link_nothing(store):
    """A Customerly-style ID that is the email states no link; a link on one connection keys nothing
    on another."""
    _, event = await put(store, "Cat@example.com", "cat@example.com")
    assert event == "none"
    await put(store, "X1", "xen@example.com")
    n = next(_serial)
    other, _, _ = await store.enqueue_contact(f"k{n}", 3600, "d", "update", None, "xen@example.com", "{}")
    assert await key_of(store, other) == "d:email:xen@example.com"
