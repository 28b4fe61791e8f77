-- Jobs: one per accepted delivery. Status moves queued → running → done | dead (or back to queued).
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    connection   TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    contact_key  TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    run_at       REAL    NOT NULL,
    lease_until  REAL,
    stage        TEXT,
    secret       TEXT,
    last_error   TEXT,
    outcome      TEXT,
    merged_into  INTEGER,
    created_at   REAL    NOT NULL,
    updated_at   REAL    NOT NULL
);
CREATE INDEX jobs_ready ON jobs (status, run_at);
CREATE INDEX jobs_contact ON jobs (contact_key, id);

-- Idempotency: a delivery seen within the window answers with its first job.
CREATE TABLE deliveries (
    dedupe_key  TEXT PRIMARY KEY,
    job_id      INTEGER NOT NULL,
    received_at REAL    NOT NULL
) WITHOUT ROWID;

-- Authenticated deliveries that could not be accepted, kept raw for inspection and replay.
CREATE TABLE rejected (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at    REAL    NOT NULL,
    connection     TEXT,
    status         INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    method         TEXT    NOT NULL,
    query          TEXT    NOT NULL,
    content_type   TEXT,
    body           BLOB    NOT NULL,
    replayed_job   INTEGER
);

-- The last few deliveries per connection, secrets masked, for field discovery.
CREATE TABLE samples (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    connection  TEXT NOT NULL,
    received_at REAL NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX samples_connection ON samples (connection, id);

-- Webhook subscriptions the bridge created in a CRM (the Cyclr pattern: keep the remote ID).
CREATE TABLE webhooks (
    connection  TEXT PRIMARY KEY,
    remote_id   TEXT NOT NULL,
    url         TEXT NOT NULL,
    created_at  REAL NOT NULL
);
