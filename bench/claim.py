"""Claim benchmark: how long taking the next due jobs costs with a long queue, before and after
claiming became an index probe.

    python bench/claim.py [--jobs 100000] [--contacts 20000] [--due 50] [--limit 4] [--repeat 30]

Two temporary SQLite files (WAL, synchronous=FULL) hold the same JOBS queued jobs spread over
CONTACTS contacts, as a WordPress or CRM outage leaves them: every contact's first job waits for
its retry (``run_at`` an hour ahead) with the contact's other jobs queued behind it, and only the
DUE newest contacts have a job to run now. Measured in the same process:
  before   the schema of migrations 0001-0002 and the claim query it had: every queued due job,
           each checked by a NOT EXISTS for an earlier active job of its contact, sorted by id
           (issue 11 measured 168 ms at 100k queued);
  after    the current schema and ``bridge.store.queue.claim``: a probe of the partial index of
           due contact heads, plus its per-job updates;
  counts   ``queue.counts`` (what /metrics and /readyz read, now at most every 5 s, off the loop).
Each figure is the median of REPEAT rounds, each round one transaction rolled back (the queue is
the same in every round). Both claims must return the same jobs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.store import queue as q  # noqa: E402
from bridge.store.db import connect, migrate, migrations  # noqa: E402

BEFORE_SQL = (
    "SELECT * FROM jobs AS j WHERE j.status = 'queued' AND j.run_at <= ?"
    " AND NOT EXISTS (SELECT 1 FROM jobs AS e WHERE e.contact_key = j.contact_key"
    "                 AND e.status IN ('queued', 'running') AND e.id < j.id)"
    " ORDER BY j.id LIMIT ?"
)


def rows(jobs: int, contacts: int):
    """(contact, action, payload, created_at) in arrival order."""
    for i in range(jobs):
        contact = f"contact-{i % contacts}@example.com"
        action = "add" if (i // contacts) % 2 == 0 else "update"  # coalescing stops early, as in real queues
        yield contact, action, json.dumps({"connection": "c", "action": action, "email": contact, "n": i}), 1000.0 + i * 1e-3


def build_before(path: Path, jobs: int, contacts: int, due: int, now: float) -> None:
    conn = connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    for version, _, sql in migrations():
        if version <= 2:
            for statement in sql.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO jobs (connection, action, contact_key, payload, run_at, created_at, updated_at)"
                     " VALUES ('c', ?, ?, ?, ?, ?, ?)", ((a, c, p, t, t, t) for c, a, p, t in rows(jobs, contacts)))
    conn.execute("UPDATE jobs SET run_at = ? WHERE id IN (SELECT MIN(id) FROM jobs GROUP BY contact_key)"
                 " AND contact_key NOT IN (SELECT contact_key FROM jobs ORDER BY id DESC LIMIT ?)", (now + 3600, due))
    conn.execute("COMMIT")
    conn.close()


def build_after(path: Path, jobs: int, contacts: int, due: int, now: float) -> None:
    conn = connect(path)
    migrate(conn)
    conn.execute("BEGIN")
    for i, (contact, action, payload, t) in enumerate(rows(jobs, contacts)):
        q.enqueue(conn, t, f"k{i}", 3600, "c", action, contact, payload)
    conn.execute("UPDATE jobs SET run_at = ? WHERE head = 1"
                 " AND contact_key NOT IN (SELECT contact_key FROM jobs ORDER BY id DESC LIMIT ?)", (now + 3600, due))
    conn.execute("COMMIT")
    conn.close()


def median_ms(conn, fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        conn.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
        conn.execute("ROLLBACK")
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--due", type=int, default=50)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    now = 10_000_000.0
    with tempfile.TemporaryDirectory() as tmp:
        before_path, after_path = Path(tmp) / "before.db", Path(tmp) / "after.db"
        build_before(before_path, args.jobs, args.contacts, args.due, now)
        build_after(after_path, args.jobs, args.contacts, args.due, now)
        print(f"{args.jobs} queued jobs over {args.contacts} contacts; {args.due} contacts due, the others retrying")
        before, after = connect(before_path), connect(after_path)
        old_ids = [r["id"] for r in before.execute(BEFORE_SQL, (now, args.limit))]
        before_ms = median_ms(before, lambda: before.execute(BEFORE_SQL, (now, args.limit)).fetchall(), args.repeat)
        after.execute("BEGIN IMMEDIATE")
        new_ids = sorted(j.id for j in q.claim(after, now, "bench", args.limit, 120.0, keep=[]))
        after.execute("ROLLBACK")
        assert new_ids == sorted(old_ids), (old_ids, new_ids)
        after_ms = median_ms(after, lambda: q.claim(after, now, "bench", args.limit, 120.0, keep=[]), args.repeat)
        counts_ms = median_ms(after, lambda: q.counts(after), max(5, args.repeat // 5))
        plan = " | ".join(r[3] for r in before.execute("EXPLAIN QUERY PLAN " + BEFORE_SQL, (now, args.limit)))
        print(f"before  (scan + NOT EXISTS): {before_ms:9.3f} ms per claim  [{plan}]")
        print(f"after   (queue.claim):       {after_ms:9.3f} ms per claim of {len(new_ids)} jobs")
        print(f"counts  (queue.counts):      {counts_ms:9.3f} ms")
        print(f"claim_before_ms={before_ms:.2f} claim_after_ms={after_ms:.3f} speedup={before_ms / after_ms:.0f}x")
        before.close()
        after.close()


if __name__ == "__main__":
    main()
