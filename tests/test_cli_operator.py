"""The operator CLI on a real database (a SQLite file; a PostgreSQL database): reading commands never
create or migrate it, filters, readable and JSON output, a contact's history, bulk requeue keeping
the failure history, replay of every rejected delivery, the online backup (SQLite's)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.cli_format import parse_since, when
from bridge.store import pgdb
from bridge.store import queue as q
from bridge.store.db import connect, migrate, migrations

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path) -> Path | str:
    """Where the database is: a SQLite file, or a PostgreSQL URL (a fresh schema)."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else tmp_path / "bridge.db"


def open_db(where: Path | str):
    """A migrated connection outside the CLI, with the queue's SQL face on either backend."""
    if isinstance(where, str):
        conn = pgdb.connect(where)
        pgdb.migrate(conn)
        return conn
    conn = connect(where)
    migrate(conn)
    return conn


def write_config(tmp_path: Path, where: Path | str) -> Path:
    path = tmp_path / "bridge.toml"
    database = f'url = "{where}"' if isinstance(where, str) else f'path = "{where}"'
    path.write_text(f"""
[server]
access_keys = ["cli-access-key-1"]
[database]
{database}
[wordpress]
application_password = "abcd efgh ijkl mnop"
[connections.cly]
crm = "customerly"
secrets = {{ token = "cly-token-123" }}
[connections.uc]
crm = "usercom"
base_url = "http://127.0.0.1:9/api"
secrets = {{ token = "uc-token-123" }}
""")
    return path


@pytest.fixture
def config(tmp_path, backend) -> Path:
    return write_config(tmp_path, backend)


@pytest.fixture
def sqlite_config(tmp_path) -> Path:
    return write_config(tmp_path, tmp_path / "bridge.db")


def _job(conn, now, connection, email, action="update", contact_id=None) -> q.Job:
    key = f"{connection}:id:{contact_id}" if contact_id else f"{connection}:email:{email}"
    payload = json.dumps({"connection": connection, "action": action, "email": email, "contact_id": contact_id})
    job_id, _ = q.enqueue(conn, now, f"k-{time.monotonic_ns()}", 0, connection, action, key, payload)
    [job] = [j for j in q.claim(conn, now, "test-owner", 50, 60) if j.id == job_id] or [None]
    return job


@pytest.fixture
def db(backend) -> Path | str:
    """Jobs of two connections: dead ones (with a retry before dying), a done one, an old dead one."""
    conn = open_db(backend)
    now = time.time()
    for connection, email, age_s in [("cly", "ada@example.com", 60), ("cly", "bob@example.com", 120),
                                     ("uc", "cy@example.com", 60), ("cly", "old@example.com", 3 * 86400)]:
        job = _job(conn, now - age_s, connection, email, contact_id="77" if connection == "uc" else None)
        q.retry_later(conn, now - age_s, job, now - age_s, "crm:x: HTTP 503: busy")
        [job] = q.claim(conn, now, "test-owner", 50, 60)
        q.bury(conn, now - age_s + 1, job, "crm:x: credentials refused")
    done = _job(conn, now - 30, "cly", "ada@example.com", action="update_tags")
    q.finish(conn, now - 29, done, {"outcome": "updated"})
    conn.close()
    return backend


def test_since_and_times_read_like_people_write_them():
    """--since takes 30m, 2h, 7d and dates; times print as UTC with an age."""
    now = 1_764_000_000.0
    assert parse_since("2h", now) == now - 7200 and parse_since("30m", now) == now - 1800
    assert parse_since("2026-11-30", now) == 1_795_996_800.0
    with pytest.raises(ValueError, match="30m, 2h, 7d"):
        parse_since("yesterday", now)
    assert when(now - 300, now).endswith("(5 min ago)") and when(None) == "-"


def test_reading_commands_on_a_missing_database_exit_66_and_create_nothing(sqlite_config, tmp_path):
    """jobs list, jobs show, contacts history, rejected list, backup: 66 naming database.path; no file made."""
    for args in (["jobs", "list"], ["jobs", "show", "1"], ["contacts", "history", "a@b.c"], ["rejected", "list"],
                 ["jobs", "requeue", "--status", "dead"], ["backup", str(tmp_path / "b.db")]):
        result = cli(*args, "-c", str(sqlite_config))
        assert result.returncode == 66 and "database.path" in result.stderr, (args, result.stderr)
    assert not (tmp_path / "bridge.db").exists() and not (tmp_path / "bridge.db-wal").exists()


def test_commands_on_an_empty_or_unreachable_postgresql_database_say_so_and_create_nothing(tmp_path, pg_url):
    """No queue schema yet: 66 naming database.url, nothing created; a server that refuses: 69, the
    password masked; backup: 64, pointing at pg_dump."""
    config = write_config(tmp_path, pg_url)
    for args in (["jobs", "list"], ["contacts", "history", "a@b.c"], ["rejected", "list"],
                 ["jobs", "requeue", "--status", "dead"], ["discover", "cly"]):
        result = cli(*args, "-c", str(config))
        assert result.returncode == 66 and "database.url" in result.stderr, (args, result.stderr)
    with pgdb.connect(pg_url).raw as raw:
        tables = raw.execute("SELECT to_regclass('jobs'), to_regclass('schema_version')").fetchone()
        assert tables == (None, None)
    backup = cli("backup", str(tmp_path / "b.db"), "-c", str(config))
    assert backup.returncode == 64 and "pg_dump" in backup.stderr
    refused = write_config(tmp_path, "postgresql://wpsb:Sekret-pw-991@127.0.0.1:9/nowhere")
    result = cli("jobs", "list", "-c", str(refused))
    assert result.returncode == 69 and "database.url" in result.stderr, result.stderr
    assert "Sekret-pw-991" not in result.stderr + result.stdout


def test_jobs_list_filters_and_json(config, db):
    """Status, connection, email or contact ID and --since combine; --json gives ISO times."""
    def ids(*args):
        out = cli("jobs", "list", "--json", "-c", str(config), *args)
        assert out.returncode == 0, out.stderr
        return [(j["connection"], j["email"], j["status"]) for j in json.loads(out.stdout)]

    assert len(ids("--status", "dead")) == 4
    assert ids("--status", "dead", "--connection", "uc") == [("uc", "cy@example.com", "dead")]
    assert ids("--contact", "77") == [("uc", "cy@example.com", "dead")]
    assert sorted(ids("--email", "ADA@example.com")) == [("cly", "ada@example.com", "dead"), ("cly", "ada@example.com", "done")]
    assert ("cly", "old@example.com", "dead") not in ids("--since", "2h")
    listed = json.loads(cli("jobs", "list", "--json", "--limit", "1", "-c", str(config)).stdout)[0]
    assert listed["created_at"].endswith("Z") and "secret" not in listed
    text = cli("jobs", "list", "--status", "dead", "--connection", "uc", "-c", str(config)).stdout
    assert "cy@example.com" in text and "ago)" in text and "credentials refused" in text
    bad = cli("jobs", "list", "--since", "yesterday", "-c", str(config))
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_contact_history_lists_jobs_in_order_with_failures(config, db):
    """contacts history EMAIL: the contact's jobs oldest first, each with its retries and death."""
    out = cli("contacts", "history", "ada@example.com", "--json", "-c", str(config))
    jobs = json.loads(out.stdout)
    assert [j["action"] for j in jobs] == ["update", "update_tags"]
    assert [h["event"] for h in jobs[0]["history"]] == ["retry", "dead"]
    text = cli("contacts", "history", "ada@example.com", "-c", str(config)).stdout
    assert "retry after attempt 1: crm:x: HTTP 503: busy" in text and "dead after attempt 2" in text


def test_bulk_requeue_by_status_connection_and_since_keeps_history(config, db):
    """jobs requeue --status dead --connection cly --since 1d: only those, a summary, history kept."""
    out = cli("jobs", "requeue", "--status", "dead", "--connection", "cly", "--since", "1d", "-c", str(config))
    assert out.returncode == 0, out.stderr
    assert "summary: 2 requeued" in out.stdout
    conn = open_db(db)
    rows = conn.execute("SELECT payload, status FROM jobs WHERE action = 'update'").fetchall()
    statuses = {json.loads(payload)["email"]: status for payload, status in rows}
    assert statuses == {"ada@example.com": "queued", "bob@example.com": "queued", "cy@example.com": "dead",
                        "old@example.com": "dead"}
    history = conn.execute("SELECT event, payload FROM job_history h JOIN jobs j ON j.id = h.job_id"
                           " WHERE j.action = 'update' ORDER BY h.id").fetchall()
    events = [event for event, payload in history if json.loads(payload)["email"] == "ada@example.com"]
    conn.close()
    assert events == ["retry", "dead", "requeued"]
    again = cli("jobs", "requeue", "--status", "dead", "--connection", "cly", "--since", "1d", "-c", str(config))
    assert "no job matched" in again.stdout
    usage = cli("jobs", "requeue", "-c", str(config))
    assert usage.returncode == 2


def test_reading_does_not_migrate_an_older_database_but_writing_refuses(sqlite_config, tmp_path):
    """A database of an older schema is read as is (not migrated); a write command exits 75."""
    path = tmp_path / "bridge.db"
    conn = connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT)")
    for version, name, sql in migrations()[:2]:
        for statement in sql.split(";\n"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", (version, name))
    conn.close()
    assert cli("jobs", "list", "-c", str(sqlite_config)).returncode == 0
    assert sqlite3.connect(path).execute("SELECT MAX(version) FROM schema_version").fetchone() == (2,)
    refused = cli("jobs", "requeue", "1", "-c", str(sqlite_config))
    assert refused.returncode == 75 and "serve" in refused.stderr


def test_replay_all_and_backup(config, db, tmp_path):
    """rejected replay --all queues what now passes and sums up; backup (SQLite) makes a consistent copy."""
    conn = open_db(db)
    body = json.dumps({"type": "user.updated", "data": {"user": {"data": {"email": "re@example.com"}}}}).encode()
    for raw in (body, b"{broken"):
        q.reject(conn, time.time(), "cly", 400, "invalid_json", "POST", {"wpf_action": "update"}, "application/json", raw)
    conn.close()
    out = cli("rejected", "replay", "--all", "-c", str(config))
    assert out.returncode == 1 and "summary: 1 queued, 1 still refused" in out.stdout
    assert "rejected 2: still refused" in out.stdout
    listed = cli("rejected", "list", "-c", str(config)).stdout
    assert "replayed as job" in listed and "invalid_json" in listed
    if isinstance(db, str):
        return  # PostgreSQL: backup points at pg_dump (test above)

    target = tmp_path / "copy.db"
    done = cli("backup", str(target), "-c", str(config))
    assert done.returncode == 0, done.stderr
    copy = sqlite3.connect(target)
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert copy.execute("SELECT COUNT(*) FROM jobs").fetchone() == sqlite3.connect(db).execute("SELECT COUNT(*) FROM jobs").fetchone()
    assert cli("backup", str(target), "-c", str(config)).returncode == 73
