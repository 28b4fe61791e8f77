-- A job's failures and requeues, appended on each (a requeue keeps them; last_error is only the
-- latest). Pruned with the job.
CREATE TABLE job_history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at       REAL    NOT NULL,
    event    TEXT    NOT NULL CHECK (event IN ('retry', 'dead', 'requeued')),
    attempt  INTEGER NOT NULL,
    error    TEXT
);
CREATE INDEX job_history_job ON job_history (job_id, id)
