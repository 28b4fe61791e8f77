-- Fenced leases: the instance (one random ID per process start) that holds a running job, and a
-- heartbeat its renewals bump (a peer's lease is judged by whether this changes, on the observer's
-- monotonic clock, never by comparing wall-clock times).
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN heartbeat INTEGER NOT NULL DEFAULT 0;
-- 1 on the one job of its contact that may run next (the oldest queued or running one): claiming
-- becomes an index probe of the due heads instead of a scan with a NOT EXISTS per candidate.
ALTER TABLE jobs ADD COLUMN head INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET head = 1 WHERE id IN
    (SELECT MIN(id) FROM jobs WHERE status IN ('queued', 'running') GROUP BY contact_key);
-- The retry budget is counted by age from here: the job's arrival, or its last requeue.
ALTER TABLE jobs ADD COLUMN budget_from REAL;
UPDATE jobs SET budget_from = created_at;
CREATE INDEX jobs_due_heads ON jobs (run_at, id) WHERE head = 1 AND status = 'queued';
CREATE INDEX jobs_active ON jobs (contact_key, id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_running ON jobs (owner) WHERE status = 'running'
