"""Fenced leases on both stores (a real SQLite file; a real PostgreSQL database): one run of a job at
a time, whatever the wall clock does (see bridge/store/leases.py for the design these tests pin down)."""

import pytest

from bridge.store import queue as q
from bridge.store.jobs import FencedOut, JobStore
from bridge.store.leases import LeaseWatch
from tests.unit.test_queue import Clock, put, store  # noqa: F401 - the parametrised store fixture


class Mono:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


async def test_a_claim_records_the_owner_and_attempt(store, tmp_path):
    """The row names the process that runs it (random per start) and the attempt."""
    job_id, _ = await put(store, "a", "add")
    [job] = await store.claim(5, 60)
    stored = await store.get_job(job_id)
    assert (stored["status"], stored["owner"], stored["attempts"]) == ("running", store.owner, 1)
    assert job.owner == store.owner and job.attempts == 1
    other = JobStore.__new__(JobStore)  # owner IDs are per process start: two inits never share one
    JobStore.__init__(other, tmp_path / "q.db", None, None, clock=lambda: 0)
    assert other.owner != store.owner
    other.reader.close()


async def test_a_wall_clock_step_neither_expires_nor_reclaims_running_jobs(store, clock):
    """The clock jumps a day (and back): the running job is not released, not claimable, and its result lands."""
    job_id, _ = await put(store, "a", "add")
    await put(store, "a", "update")
    [job] = await store.claim(5, lease_s=60)
    mono = Mono()
    watch = LeaseWatch(60, mono)
    for step_s in (86_400, -2 * 86_400):
        clock.t += step_s
        mono.t += 120  # even with a lease's worth of real time passing
        assert await store.expire_peer_leases(watch) == []
        assert await store.claim(5, 60, keep=[job.id]) == []
    assert await store.finish(job, {"outcome": "created"}) is True
    assert (await store.get_job(job_id))["status"] == "done"


async def test_writes_of_a_run_that_lost_its_job_are_fenced_out(store):
    """After a put-back and a new claim, the old run's finish/retry/bury/save_stage change nothing."""
    job_id, _ = await put(store, "a", "add")
    [old] = await store.claim(5, 60)
    await store.release_running()
    [new] = await store.claim(5, 60)
    assert (new.id, new.attempts) == (old.id, 2)
    assert await store.finish(old, {"outcome": "created"}) is False
    assert await store.retry_later(old, 0, "Transient: x") is False
    assert await store.bury(old, "Permanent: x") is False
    with pytest.raises(FencedOut):
        await store.save_stage(old, '{"step": "write_back"}', "pw-old")
    current = await store.get_job(job_id)
    assert (current["status"], current["attempts"], current["stage"]) == ("running", 2, None)
    assert current["has_secret"] is False
    await store.save_stage(new, None, "pw-new")
    assert await store.finish(new, {"outcome": "created"}) is True
    assert (await store.get_job(job_id))["status"] == "done"


async def test_a_claim_puts_back_the_owners_jobs_it_does_not_run(store):
    """A claim whose answer was lost left jobs running for nobody: the next claim (with the jobs
    the owner runs as ``keep``) puts them back and takes them again; the kept one is untouched."""
    kept_id, _ = await put(store, "a", "add")
    lost_id, _ = await put(store, "b", "add")
    jobs = await store.claim(5, 60)
    assert sorted(j.id for j in jobs) == [kept_id, lost_id]
    [again] = await store.claim(5, 60, keep=[kept_id])
    assert (again.id, again.attempts) == (lost_id, 2)
    assert (await store.get_job(kept_id))["attempts"] == 1


def _peer_claims(conn, job_id, owner):
    conn.execute("UPDATE jobs SET status = 'running', owner = ?, attempts = attempts + 1 WHERE id = ?",
                 (owner, job_id))


def _peer_heartbeat(conn, job_id):
    conn.execute("UPDATE jobs SET heartbeat = heartbeat + 1 WHERE id = ?", (job_id,))


async def peer_claims(store, job_id, owner="peer-1"):
    """Another bridge (another owner) claims the job, as its own claim would."""
    await store.call(_peer_claims, job_id, owner)


async def peer_heartbeat(store, job_id):
    await store.call(_peer_heartbeat, job_id)


async def test_a_peers_lease_expires_only_after_its_heartbeat_stood_still_for_a_lease(store, tmp_path):
    """Judged on our monotonic clock: a heartbeat that moves keeps the job; one that stands still
    for lease_s lets it be put back, and it runs here with the next attempt."""
    job_id, _ = await put(store, "a", "add")
    await peer_claims(store, job_id)
    mono = Mono()
    watch = LeaseWatch(60, mono)
    assert await store.expire_peer_leases(watch) == []
    mono.t += 59
    assert await store.expire_peer_leases(watch) == []
    await peer_heartbeat(store, job_id)  # the peer is alive: the clock starts over
    mono.t += 59
    assert await store.expire_peer_leases(watch) == []
    mono.t += 59
    assert await store.expire_peer_leases(watch) == []
    assert await store.claim(5, 60) == []
    mono.t += 1
    [expired] = await store.expire_peer_leases(watch)
    assert expired[0] == job_id and expired[1] == "peer-1"
    [job] = await store.claim(5, 60)
    assert (job.id, job.attempts, job.owner) == (job_id, 2, store.owner)


def test_lease_watch_forgets_leases_it_no_longer_sees():
    """A lease that left the running set and comes back (a new claim) starts a new observation."""
    mono = Mono()
    watch = LeaseWatch(10, mono)
    lease = (1, "p", 1, 0)
    assert watch.expired([lease]) == []
    mono.t = 5
    assert watch.expired([]) == []
    mono.t = 12
    assert watch.expired([lease]) == []
    mono.t = 22
    assert watch.expired([lease]) == [lease]


async def test_an_expired_lease_put_back_is_fenced_by_the_observed_heartbeat(store, tmp_path):
    """The put-back names the (owner, attempt, heartbeat) observed: a heartbeat in between wins."""
    job_id, _ = await put(store, "a", "add")
    await peer_claims(store, job_id)
    [lease] = await store.read(q.running_leases, store.owner)
    await peer_heartbeat(store, job_id)
    assert await store.call(q.expire_lease, 0.0, lease) is False
    assert (await store.get_job(job_id))["status"] == "running"


async def test_bury_hands_the_contact_to_its_next_job_and_requeue_keeps_one_run_per_contact(store):
    """A dead job lets its contact's next job run; requeued while that one runs, it waits for it."""
    first, _ = await put(store, "a", "add")
    second, _ = await put(store, "a", "add")
    [job] = await store.claim(5, 60)
    await store.bury(job, "Permanent: x")
    [nxt] = await store.claim(5, 60)
    assert nxt.id == second
    assert await store.call(q.requeue, 0.0, first) is True
    assert await store.claim(5, 60, keep=[second]) == []  # one run per contact at a time
    await store.finish(nxt, {"outcome": "updated"})
    [again] = await store.claim(5, 60)
    assert (again.id, again.attempts) == (first, 1)


async def test_requeue_goes_ahead_of_the_contacts_waiting_jobs(store):
    """A requeued dead job runs before its contact's later jobs that still wait (its place in line)."""
    first, _ = await put(store, "a", "add")
    [job] = await store.claim(5, 60)
    await store.bury(job, "Permanent: x")
    waiting, _ = await put(store, "a", "delete")  # not coalesced: it keeps its own run
    assert await store.call(q.requeue, 0.0, first) is True
    [nxt] = await store.claim(5, 60)
    assert nxt.id == first and nxt.merged == []
    await store.finish(nxt, {"outcome": "created"})
    assert [j.id for j in await store.claim(5, 60)] == [waiting]


async def test_content_keyed_repeat_merges_only_while_the_first_job_waits(store):
    """Without a sender's event ID, the same bytes are a duplicate while the first job is queued and
    unclaimed; once it ran (running, done or dead) they are new work."""
    first, _ = await put(store, "a", "update", key="same", waiting_only=True)
    assert await put(store, "a", "update", key="same", waiting_only=True) == (first, True)
    [job] = await store.claim(5, 60)
    running_repeat, dup = await put(store, "a", "update", key="same", waiting_only=True)
    assert dup is False and running_repeat != first
    await store.finish(job, {"outcome": "updated"})
    assert await put(store, "a", "update", key="same", waiting_only=True) == (running_repeat, True)
    [job2] = await store.claim(5, 60)
    await store.bury(job2, "Permanent: x")
    after_dead, dup = await put(store, "a", "update", key="same", waiting_only=True)
    assert dup is False and after_dead not in (first, running_repeat)


async def test_event_id_repeat_is_a_duplicate_even_after_the_job_ran(store):
    """A sender's event ID dedupes within the window whatever became of the job."""
    first, _ = await put(store, "a", "update", key="wh:c:evt-1")
    [job] = await store.claim(5, 60)
    await store.finish(job, {"outcome": "updated"})
    assert await put(store, "a", "update", key="wh:c:evt-1") == (first, True)


def test_claiming_probes_the_index_of_due_heads(tmp_path):
    """The claim query is a search of the partial index, not a scan of the queue."""
    from bridge.store.db import connect, migrate

    conn = connect(tmp_path / "p.db")
    migrate(conn)
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM jobs INDEXED BY jobs_due_heads WHERE head = 1 AND status = 'queued' AND run_at <= ?"
        " ORDER BY run_at, id LIMIT ?", (0, 5)))
    assert "USING INDEX jobs_due_heads" in plan and "TEMP B-TREE" not in plan, plan
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT 1 FROM jobs INDEXED BY jobs_active WHERE contact_key = ?"
        " AND status IN ('queued', 'running') LIMIT 1",
        ("x",)))
    assert "jobs_active" in plan, plan
    conn.close()


def test_claiming_probes_the_index_of_due_heads_on_postgresql(pg_url):
    """On PostgreSQL too, with 20,000 finished jobs and 2,000 waiting behind their heads, the claim's
    query (as the adapter sends it) reads the partial index of due heads, not the table."""
    from bridge.store import pgdb

    conn = pgdb.connect(pg_url)
    pgdb.migrate(conn)
    conn.raw.execute(
        "INSERT INTO jobs (connection, action, contact_key, payload, status, run_at, head, created_at,"
        " updated_at)"
        " SELECT 'c', 'update', 'k' || (n % 500), '{}', CASE WHEN n < 20000 THEN 'done' ELSE 'queued' END, n,"
        " CASE WHEN n >= 20000 AND n < 20050 THEN 1 ELSE 0 END, n, n FROM generate_series(0, 21999) AS n")
    conn.raw.execute("ANALYZE jobs")
    sql = pgdb.translate("EXPLAIN SELECT * FROM jobs INDEXED BY jobs_due_heads WHERE head = 1"
                         " AND status = 'queued' AND run_at <= ? ORDER BY run_at, id LIMIT ?"
                         " FOR UPDATE SKIP LOCKED")
    plan = "\n".join(r[0] for r in conn.raw.execute(sql, (1e12, 8)).fetchall())
    conn.close()
    assert "jobs_due_heads" in plan and "Seq Scan" not in plan, plan
