"""The queue's contract on both stores (a real SQLite file; a real PostgreSQL database): durability,
dedupe, per-contact order, coalescing, leases, migrations. What only one store has (the writer
process, the file lock) is tested on that store."""

import asyncio
import json
import sqlite3

import pytest

from bridge.store import queue as q
from bridge.store.db import SchemaTooNew, connect, migrate, migrations
from bridge.store.jobs import DatabaseLocked, JobStore


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, clock):
    """The store under test, on each backend."""
    if request.param == "postgresql":
        from bridge.store.pgjobs import PgJobStore

        s = PgJobStore.open(request.getfixturevalue("pg_url"), clock=clock)
    else:
        s = JobStore.open(tmp_path / "q.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path, clock):
    s = JobStore.open(tmp_path / "q.db", clock=clock)
    yield s
    s.close()


def other_connection(store):
    """A second connection to the store's database, outside the bridge."""
    if hasattr(store, "url"):
        import psycopg

        return psycopg.connect(store.url)
    return sqlite3.connect(store.path)


_serial = iter(range(10**9))


async def put(store, contact, action="update", key=None, window=3600, waiting_only=False):
    """Queue a job; each call is a distinct delivery unless ``key`` repeats."""
    n = next(_serial)
    return await store.enqueue(key or f"k{n}", window, "c", action, contact, json.dumps({"contact": contact, "n": n}),
                               waiting_only)


async def test_enqueued_job_is_on_disk_when_acknowledged(store):
    """Once enqueue returns, another connection to the database sees the job (it is committed)."""
    job_id, dup = await put(store, "a", key="k1")
    other = other_connection(store)
    mark = "%s" if hasattr(store, "url") else "?"
    assert other.execute(f"SELECT status FROM jobs WHERE id = {mark}", (job_id,)).fetchone() == ("queued",)
    other.close()
    assert dup is False


async def test_duplicate_within_window_returns_first_job(store, clock):
    """The same dedupe key within the window answers with the original job; after it, a new job."""
    first, _ = await put(store, "a", key="same", window=60)
    again, dup = await put(store, "a", key="same", window=60)
    assert (again, dup) == (first, True)
    clock.t += 61
    later, dup = await put(store, "a", key="same", window=60)
    assert later != first and dup is False


async def test_claim_takes_one_job_per_contact_in_order(store):
    """Only the oldest job of each contact is runnable; other contacts run alongside (a delete is
    never coalesced, so it waits for its turn)."""
    a1, _ = await put(store, "a", "add")
    a2, _ = await put(store, "a", "delete")
    b1, _ = await put(store, "b", "add")
    jobs = await store.claim(10, 60)
    assert [j.id for j in jobs] == [a1, b1]
    assert await store.claim(10, 60) == []  # a2 waits for a1
    await store.finish(jobs[0], {"outcome": "created"})
    assert [j.id for j in await store.claim(10, 60)] == [a2]


async def test_retry_keeps_the_contact_blocked_until_it_is_due(store, clock):
    """A job waiting for its retry still holds back its contact's later jobs (order across retries)."""
    a1, _ = await put(store, "a", "add")
    a2, _ = await put(store, "a", "update_tags")
    [job] = await store.claim(10, 60)
    await store.retry_later(job, clock.t + 30, "Transient: x")
    assert await store.claim(10, 60) == []
    clock.t += 31
    [again] = await store.claim(10, 60)
    assert again.id == a1 and again.attempts == 2


async def test_waiting_jobs_are_coalesced_up_to_the_next_delete(store):
    """Consecutive add/update/update_tags jobs of one contact are claimed as one run, with every
    merged payload (the planner merges their effects), up to the next delete."""
    u1, _ = await put(store, "a", "update_tags")
    u2, _ = await put(store, "a", "update")
    add, _ = await put(store, "a", "add")
    u3, _ = await put(store, "a", "update_tags")
    delete, _ = await put(store, "a", "delete")
    [job] = await store.claim(10, 60)
    assert (job.id, job.merged, job.effective_action) == (u1, [u2, add, u3], "add")
    assert job.merged_payloads == [(await store.get_job(i))["payload"] for i in (u2, add, u3)]
    assert job.newest_payload == (await store.get_job(u3))["payload"]
    await store.finish(job, {"outcome": "updated"})
    merged = await store.get_job(u3)
    assert merged["status"] == "done" and merged["outcome"]["coalesced_into"] == u1
    [nxt] = await store.claim(10, 60)
    assert nxt.id == delete and nxt.merged == []


async def test_nothing_is_merged_into_a_run_that_resumes_at_its_write_back(store):
    """A job whose upsert is done (stage write_back) runs alone; the updates behind it run after it."""
    add, _ = await put(store, "a", "add")
    [job] = await store.claim(10, 60)
    await store.save_stage(job, json.dumps({"step": "write_back", "outcome": {"outcome": "created"}}), "pw-1234567")
    await store.retry_later(job, store.clock(), "crm: HTTP 503")
    update, _ = await put(store, "a", "update")
    [again] = await store.claim(10, 60)
    assert (again.id, again.merged) == (add, [])
    await store.finish(again, {"outcome": "created"})
    [nxt] = await store.claim(10, 60)
    assert nxt.id == update


async def test_jobs_left_running_by_a_previous_process_run_again_at_start(store):
    """release_running queues running jobs again (SQLite, at start-up: the file lock proves their owner
    is gone; PostgreSQL, at stop: this process's own, the others' being taken over by lease)."""
    await put(store, "a", "add")
    [job] = await store.claim(10, lease_s=60)
    assert await store.release_running() == 1
    [again] = await store.claim(10, 60)
    assert again.id == job.id and again.attempts == 2


async def test_bury_erases_the_secret(store):
    """A dead job keeps its reason and loses any stored password."""
    await put(store, "a", "add")
    [job] = await store.claim(1, 60)
    await store.save_stage(job, None, "pw-Secret-123")
    await store.bury(job, "Permanent: bad data")
    row = await store.get_job(job.id)
    assert row["status"] == "dead" and row["last_error"] == "Permanent: bad data" and row["has_secret"] is False


def boom(conn):
    """A store call that writes, then fails (module level: calls are pickled by name to the writer process)."""
    conn.execute("INSERT INTO samples (connection, received_at, body) VALUES ('x', 0, '{}')")
    raise ValueError("nope")


def count_samples(conn):
    return conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]


class Unpicklable(Exception):
    def __init__(self, a, b):  # pickling re-creates it with one argument: fails
        super().__init__(f"{a}/{b}")


def raise_unpicklable(conn):
    raise Unpicklable("x", "y")


async def test_a_failing_call_does_not_undo_its_batch_neighbours(store):
    """Group commit: one call raising inside a batch leaves the others committed."""
    import asyncio

    results = await asyncio.gather(put(store, "a", "add"), store.call(boom), put(store, "b", "add"), return_exceptions=True)
    assert isinstance(results[1], ValueError) and str(results[1]) == "nope"
    assert (await store.counts())["queued"] == 2
    assert await store.call(count_samples) == 0


async def test_enqueues_of_one_batch_see_each_other_and_a_failing_one_fails_alone(store):
    """Deliveries committed together (pipelined on PostgreSQL): a key repeated in the batch is a
    duplicate of its first job, a contact's second job is not its head, and an enqueue that fails
    (a payload the table refuses) fails alone."""
    import asyncio

    window = 3600
    results = await asyncio.gather(
        store.enqueue("k-same", window, "c", "add", "a", json.dumps({"n": 1})),
        store.enqueue("k-same", window, "c", "add", "a", json.dumps({"n": 1})),
        store.enqueue("k-next", window, "c", "update", "a", json.dumps({"n": 2})),
        store.enqueue("k-bad", window, "c", "update", "b", None),  # type: ignore[arg-type]
        store.enqueue("k-other", window, "c", "add", "b", json.dumps({"n": 3})),
        return_exceptions=True)
    (first, dup1), (again, dup2), (nxt, dup3), bad, (other, dup4) = results
    assert (dup1, dup2, dup3, dup4) == (False, True, False, False) and again == first
    assert isinstance(bad, Exception) and "null" in str(bad).lower()
    conn = other_connection(store)
    try:
        heads = dict(conn.execute("SELECT id, head FROM jobs").fetchall())
    finally:
        conn.close()
    assert heads == {first: 1, nxt: 0, other: 1}


async def test_an_error_that_cannot_cross_to_the_parent_is_named(sqlite_store):
    store = sqlite_store
    with pytest.raises(RuntimeError, match="Unpicklable: x/y"):
        await store.call(raise_unpicklable)
    assert (await store.counts())["queued"] == 0


async def test_a_killed_writer_process_fails_calls_in_flight_and_is_replaced(sqlite_store):
    """The writer child dies: the waiting call gets WriterUnavailable (intake answers 503), the next starts a new child."""
    import os
    import signal

    from bridge.store.writer import WriterUnavailable

    store = sqlite_store
    await put(store, "a", "add")
    writer = store._writer
    first = writer._proc
    os.kill(first.pid, signal.SIGKILL)
    with pytest.raises(WriterUnavailable):
        await put(store, "b", "add")
    assert first.wait(5) == -signal.SIGKILL
    await put(store, "c", "add")
    assert writer._proc is not first and writer._proc.poll() is None
    assert (await store.counts())["queued"] == 2  # a, c: b was never acknowledged


async def test_closing_the_store_ends_the_writer_process(tmp_path):
    s = JobStore.open(tmp_path / "w.db")
    await put(s, "a", "add")
    proc = s._writer._proc
    s.close()
    assert proc.poll() == 0  # exited by itself on EOF, after committing and checkpointing
    with sqlite3.connect(tmp_path / "w.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1


def test_second_process_on_the_same_file_is_refused(tmp_path):
    """Two bridges on one database would steal each other's running jobs: the second is refused."""
    first = JobStore.open(tmp_path / "x.db")
    try:
        with pytest.raises(DatabaseLocked):
            JobStore.open(tmp_path / "x.db")
    finally:
        first.close()


def test_database_newer_than_the_code_is_refused(tmp_path):
    """A schema version beyond the known migrations raises SchemaTooNew with both versions."""
    conn = connect(tmp_path / "n.db")
    migrate(conn)
    latest = migrations()[-1][0]
    conn.execute("INSERT INTO schema_version (version, name) VALUES (?, 'future')", (latest + 1,))
    with pytest.raises(SchemaTooNew) as info:
        migrate(conn)
    assert info.value.found == latest + 1 and str(latest) in str(info.value)


def test_migrations_are_applied_once(tmp_path):
    """Migrating twice is a no-op."""
    conn = connect(tmp_path / "m.db")
    v = migrate(conn)
    assert migrate(conn) == v == migrations()[-1][0]


async def test_prune_removes_old_done_jobs_and_expired_dedupe_keys(store, clock):
    """Done jobs past the retention and dedupe keys past the window are deleted; queued and dead jobs stay."""
    done_id, _ = await put(store, "a", "add", key="old")
    dead_id, _ = await put(store, "b", "add")
    jobs = await store.claim(10, 60)
    await store.finish(jobs[0], {"outcome": "created"})
    await store.bury(jobs[1], "Permanent: x")
    clock.t += 100
    fresh_id, _ = await put(store, "c", "add")
    removed = await store.call(q.prune, clock.t, 50, 50)
    assert removed == (1, 2)  # the old done job; the keys of the two old deliveries
    assert await store.get_job(done_id) is None
    assert (await store.get_job(dead_id))["status"] == "dead" and (await store.get_job(fresh_id))["status"] == "queued"
    again, dup = await put(store, "a", "add", key="old")
    assert dup is False and again != done_id


async def test_a_killed_postgresql_writer_connection_is_replaced_and_the_batch_redone(pg_url):
    """The server ends the writer's sessions (a failover): the transaction was rolled back there, so
    the batch is redone on a new connection and the call commits; nothing is lost or doubled."""
    import psycopg

    from bridge.store.pgjobs import PgJobStore

    store = PgJobStore.open(pg_url)
    try:
        await put(store, "a", "add")
        pids = [conn.raw.info.backend_pid for conn in store._writer._conns]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # Each lane is a thread taking whatever call comes next: calls go two at a time until every
        # lane has met its dead session and replaced it (a lane that got no call still holds it).
        sent = 1

        def replaced() -> bool:
            return all(conn is None or conn.raw.info.backend_pid not in pids for conn in store._writer._conns)

        while not replaced() and sent < 41:
            await asyncio.gather(put(store, f"b{sent}", "add"), put(store, f"c{sent}", "add"))
            sent += 2
        assert replaced(), "a lane never got a call"
        assert (await store.counts())["queued"] == sent
    finally:
        store.close()


async def test_two_bridges_on_one_postgresql_queue_keep_each_contact_in_order_and_alone(pg_url):
    """Two stores (two bridges) take deliveries and run jobs at once on one database: every job runs
    exactly once, one contact's jobs never run at the same time and start in arrival order."""
    import asyncio

    from bridge.store.pgjobs import PgJobStore

    bridges = [PgJobStore.open(pg_url), PgJobStore.open(pg_url)]
    try:
        ids = await asyncio.gather(*(put(bridges[n % 2], f"c{n % 20}", "delete") for n in range(400)))
        by_contact: dict[str, list[int]] = {}
        for n, (job_id, _) in enumerate(ids):
            by_contact.setdefault(f"c{n % 20}", []).append(job_id)
        running: dict[str, int] = {}
        started: dict[str, list[int]] = {}

        async def work(store):
            idle = 0
            while idle < 5:
                jobs = await store.claim(8, 60)
                idle = 0 if jobs else idle + 1
                for job in jobs:
                    assert job.contact_key not in running, f"{job.contact_key} runs twice"
                    running[job.contact_key] = job.id
                    started.setdefault(job.contact_key, []).append(job.id)
                await asyncio.sleep(0.001)
                for job in jobs:
                    del running[job.contact_key]
                    assert await store.finish(job, {"outcome": "deleted"})
                if not jobs:
                    await asyncio.sleep(0.02)

        await asyncio.gather(*(work(b) for b in bridges))
        for contact, expected in by_contact.items():
            assert started[contact] == sorted(expected), contact
        assert (await bridges[0].counts())["done"] == 400
    finally:
        for b in bridges:
            b.close()


def test_postgresql_migrations_run_once_even_when_bridges_start_together(pg_url):
    """Three bridges migrating one empty database at the same moment: each migration applied once,
    all end at the latest version; a database newer than the code is refused, naming both versions."""
    from concurrent.futures import ThreadPoolExecutor

    from bridge.store import pgdb

    def start() -> int:
        conn = pgdb.connect(pg_url)
        try:
            return pgdb.migrate(conn)
        finally:
            conn.close()

    with ThreadPoolExecutor(3) as pool:
        versions = list(pool.map(lambda _: start(), range(3)))
    latest = pgdb.migrations()[-1][0]
    assert versions == [latest] * 3
    conn = pgdb.connect(pg_url)
    try:
        rows = conn.raw.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [v for v, _, _ in pgdb.migrations()]
        conn.raw.execute("INSERT INTO schema_version (version, name) VALUES (%s, 'future')", (latest + 1,))
        with pytest.raises(SchemaTooNew) as info:
            pgdb.migrate(conn)
        assert info.value.found == latest + 1 and str(latest) in str(info.value)
    finally:
        conn.close()


def late_locking_insert(conn, key):
    """A call that finds out while it runs that it needs ``key``'s lock (like an email linked to an ID)."""
    conn.execute("INSERT INTO samples (connection, received_at, body) VALUES ('late', 0, '{}')")
    from bridge.store.pgdb import lock

    lock(conn, [key])
    return "done"


async def test_a_lock_found_late_and_held_elsewhere_redoes_the_batch_without_waiting_out_of_order(pg_url):
    """A call needing a lock its batch did not take up front only tries it; held by another
    transaction, the batch is redone with it taken in sorted order: it waits for the holder, then
    commits once (the first try's writes were rolled back)."""
    import asyncio

    import psycopg

    from bridge.store.pgjobs import PgJobStore

    store = PgJobStore.open(pg_url)
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended('late-key', 0))")
        call = asyncio.ensure_future(store.call(late_locking_insert, "late-key"))
        await asyncio.sleep(0.5)
        assert not call.done()  # waiting, in order, for the holder
        holder.rollback()
        assert await asyncio.wait_for(call, 5) == "done"
        assert await store.call(count_samples) == 1
    finally:
        holder.close()
        store.close()


async def test_database_notify_false_sends_no_notify_and_polling_still_finds_the_job(pg_url):
    """With database.notify = false a bridge's commits wake no peer (it finds the job at its next
    poll); with the default, a peer's listener is told of the new job."""
    import asyncio

    from bridge.settings import load_settings
    from bridge.store.backends import open_store
    from bridge.store.pgjobs import PgJobStore

    quiet = open_store(load_settings(None, database={"url": pg_url, "notify": False}).database)
    loud, peer = PgJobStore.open(pg_url), PgJobStore.open(pg_url)
    woken: list[float] = []
    watching = asyncio.ensure_future(peer.watch(lambda: woken.append(asyncio.get_running_loop().time())))
    try:
        for _ in range(200):
            if peer._listener is not None:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # LISTEN is in place
        await put(quiet, "q", "add")
        await asyncio.sleep(1.0)
        assert woken == []
        assert [job.contact_key for job in await peer.claim(8, 60)] == ["q"]  # what a poll finds
        await put(loud, "l", "add")
        for _ in range(300):
            if woken:
                break
            await asyncio.sleep(0.01)
        assert len(woken) == 1
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await peer.close_listener()
        for store in (quiet, loud, peer):
            store.close()


async def test_intake_batches_queue_linked_emails_on_the_id_key_in_order(store):
    """Intake's calls committed together (PostgreSQL: one query for the links, one pipeline for
    the jobs): an email linked to an ID joins the ID's line behind the ID's own earlier job, a
    repeated key is a duplicate, and a delivery that fails fails alone."""
    import asyncio

    assert await store.learn_link("c", "ID7", "x@y.org") == "new"

    def put_contact(key, contact_id, email, payload):
        return store.enqueue_contact(key, 3600, "c", "update", contact_id, email, payload, False, False)

    results = await asyncio.gather(
        put_contact("k-id", "ID7", None, json.dumps({"n": 1})),
        put_contact("k-mail", None, "X@y.org", json.dumps({"n": 2})),
        put_contact("k-mail", None, "X@y.org", json.dumps({"n": 2})),
        put_contact("k-bad", None, "b@y.org", None),
        put_contact("k-b", None, "b@y.org", json.dumps({"n": 3})),
        return_exceptions=True)
    (by_id, d1, _), (by_mail, d2, _), (again, d3, _), bad, (other, d4, _) = results
    assert (d1, d2, d3, d4) == (False, False, True, False) and again == by_mail
    assert isinstance(bad, Exception)
    rows = {job_id: (await store.get_job(job_id)) for job_id in (by_id, by_mail, other)}
    assert rows[by_mail]["contact_key"] == rows[by_id]["contact_key"] == "c:id:ID7"
    assert (rows[by_id]["head"], rows[by_mail]["head"], rows[other]["head"]) == (1, 0, 1)
    assert rows[other]["contact_key"] == "c:email:b@y.org"
    if hasattr(store._writer, "isolated"):  # PostgreSQL: good deliveries together take the one-piece path
        before = store._writer.isolated
        await asyncio.gather(*(put_contact(f"k-ok{n}", None, f"p{n}@y.org", "{}") for n in range(50)))
        assert store._writer.isolated == before


async def test_one_delivery_sent_to_two_bridges_at_once_is_one_job(pg_url):
    """The same sender's event ID arriving at two bridges at the same moment (a retry through the
    load balancer): one job; every other answer names it as the duplicate."""
    import asyncio

    from bridge.store.pgjobs import PgJobStore

    bridges = [PgJobStore.open(pg_url), PgJobStore.open(pg_url)]
    try:
        answers = await asyncio.gather(*(
            bridges[n % 2].enqueue_contact("wh:c:evt-42", 3600, "c", "update", None, "d@x.org", "{}",
                                           False, False)
            for n in range(20)))
        job_ids = {job_id for job_id, _, _ in answers}
        assert len(job_ids) == 1 and sum(not dup for _, dup, _ in answers) == 1
        assert (await bridges[0].counts())["queued"] == 1
    finally:
        for b in bridges:
            b.close()
