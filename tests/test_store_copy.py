"""Moving a queue from SQLite to PostgreSQL (``store copy``) and the doctor on PostgreSQL: what waits
and what died moves with its place in line, its write-back stage and its history; dedupe keys and
the database's identity move too; a running source bridge and a non-empty target are refused; a
password in the URL is never printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bridge.store import queue as q
from bridge.store.jobs import JobStore
from bridge.store.pgjobs import PgJobStore

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


async def enqueue(store, key: str, contact: str, action: str = "update") -> int:
    payload = json.dumps({"email": contact, "key": key})
    job_id, _ = await store.enqueue(key, 3600, "cly", action, contact, payload)
    return job_id


async def source_queue(path: Path) -> dict:
    """A SQLite queue with every kind of job a copy meets; the store is closed again (as a stopped bridge)."""
    store = JobStore.open(path)
    try:
        ids = {"done": await enqueue(store, "wh:cly:evt-done", "cly:email:done@x.org")}
        [done] = await store.claim(1, 60)
        await store.finish(done, {"outcome": "updated"})
        ids["dead"] = await enqueue(store, "k-dead", "cly:email:dead@x.org", "add")
        [dead] = await store.claim(5, 60)
        await store.retry_later(dead, 0.0, "crm:cly: HTTP 503")
        [dead] = await store.claim(5, 60)
        await store.bury(dead, "crm:cly: credentials refused")
        ids["writing_back"] = await enqueue(store, "k-wb", "cly:email:wb@x.org", "add")
        [wb] = await store.claim(5, 60)
        await store.save_stage(wb, json.dumps({"step": "write_back"}), "Generated-pw-77")
        ids["head"] = await enqueue(store, "k-a1", "cly:email:a@x.org", "delete")
        ids["behind"] = await enqueue(store, "k-a2", "cly:email:a@x.org", "delete")
        await store.reject(connection="cly", status=400, reason="invalid_json", method="POST", query={},
                           content_type="application/json", body=b"{broken")
        await store.call(q.keep_sample, 1.0, "cly", json.dumps({"email": "s@x.org"}), 5)
        ids["instance"] = store.instance_id
    finally:
        store.close()
    return ids


async def test_store_copy_moves_waiting_and_dead_jobs_in_order_with_their_state(tmp_path, pg_url):
    db = tmp_path / "bridge.db"
    ids = await source_queue(db)
    out = cli("store", "copy", "--from", str(db), "--to", pg_url)
    assert out.returncode == 0, out.stderr
    assert "copied to" in out.stdout and "1 dead" in out.stdout and "3 queued" in out.stdout, out.stdout

    pg = PgJobStore.open(pg_url)
    try:
        counts = await pg.counts()
        assert (counts["queued"], counts["dead"], counts["done"], counts["running"]) == (3, 1, 0, 0)
        assert pg.instance_id == ids["instance"]  # request IDs sent to WordPress stay the same
        wb = await pg.get_job(ids["writing_back"])
        assert wb["status"] == "queued" and wb["has_secret"]
        assert json.loads(wb["stage"])["step"] == "write_back"
        # A sender's retry of a delivery the old bridge took is still a duplicate.
        assert await pg.enqueue("wh:cly:evt-done", 3600, "cly", "update", "cly:email:done@x.org", "{}") == (
            ids["done"], True)
        new = await enqueue(pg, "k-new", "cly:email:new@x.org")
        assert new > max(v for k, v in ids.items() if k != "instance")
        claimed = {job.id for job in await pg.claim(10, 60)}
        assert ids["head"] in claimed and ids["behind"] not in claimed and ids["writing_back"] in claimed
    finally:
        pg.close()
    config = tmp_path / "pg.toml"
    config.write_text(f'[server]\naccess_keys = ["copy-key-1"]\n[database]\nurl = "{pg_url}"\n'
                      '[wordpress]\napplication_password = "abcd efgh ijkl mnop"\n'
                      '[connections.cly]\ncrm = "customerly"\nsecrets = { token = "cly-token-123" }\n')
    shown = json.loads(cli("jobs", "show", str(ids["dead"]), "-c", str(config)).stdout)
    assert [h["event"] for h in shown["history"]] == ["retry", "dead"]
    assert "invalid_json" in cli("rejected", "list", "-c", str(config)).stdout
    doctor = json.loads(cli("doctor", "--offline", "--json", "-c", str(config)).stdout)
    findings = doctor["findings"] if isinstance(doctor, dict) else doctor
    found = {f["check"]: f for f in findings}
    assert found["database.url"]["status"] == "ok" and found["dead jobs"]["status"] == "warning"
    assert "Generated-pw-77" not in out.stdout + out.stderr


async def test_store_copy_refuses_a_running_source_and_a_non_empty_target(tmp_path, pg_url):
    db = tmp_path / "bridge.db"
    await source_queue(db)
    running = JobStore.open(db)  # a bridge holds the file
    try:
        busy = cli("store", "copy", "--from", str(db), "--to", pg_url)
        assert busy.returncode == 75 and "a bridge is running" in busy.stderr
    finally:
        running.close()
    assert cli("store", "copy", "--from", str(db), "--to", pg_url).returncode == 0
    again = cli("store", "copy", "--from", str(db), "--to", pg_url)
    assert again.returncode == 1 and "already holds" in again.stderr
    secret_url = "postgresql://wpsb:Sekret-pw-4242@127.0.0.1:9/nowhere"
    refused = cli("store", "copy", "--from", str(db), "--to", secret_url)
    assert refused.returncode == 69 and "Sekret-pw-4242" not in refused.stderr + refused.stdout
    assert "wpsb:***@127.0.0.1:9" in refused.stderr
    missing = cli("store", "copy", "--from", str(tmp_path / "none.db"), "--to", pg_url)
    assert missing.returncode == 66 and not (tmp_path / "none.db").exists()


def test_doctor_on_an_unreachable_postgresql_says_so_without_the_password(tmp_path):
    config = tmp_path / "pg.toml"
    config.write_text('[server]\naccess_keys = ["copy-key-1"]\n[database]\n'
                      'url = "postgresql://wpsb:Sekret-pw-5151@127.0.0.1:9/nowhere"\n'
                      '[wordpress]\napplication_password = "abcd efgh ijkl mnop"\n'
                      '[connections.cly]\ncrm = "customerly"\nsecrets = { token = "cly-token-123" }\n')
    out = cli("doctor", "--offline", "-c", str(config))
    assert out.returncode == 69, out.stdout
    assert "database.url" in out.stdout and "Sekret-pw-5151" not in out.stdout + out.stderr
