"""A full run of `wp-sync-bridge serve` against the real WordPress and the fake CRM, then a search for
every secret (access key, application password, CRM token, generated passwords) in every log line,
every HTTP answer, the CLI's outputs, /metrics and every table of the database.

The run: an add whose generated password is written back; a write-back the CRM refuses with an
error echoing the password (after a 503 echoing it, so tenacity logs a retry); fetches answered with
errors echoing the token until the job is dead; malformed requests carrying the key; wrong keys;
a rejected delivery; a delivery whose body carries a password-like field.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import customerly_delivery, unique_email
from tests.test_flood import MALFORMED, exchange
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress
ROOT = Path(__file__).resolve().parent.parent
ACCESS_KEY = "e2e-key-" + secrets.token_hex(8)
BODY_PASSWORD = "body-pass-" + secrets.token_hex(6)


def _config(tmp_path: Path, wp_stack: dict[str, str], fake_crm) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(f"""
log_level = "debug"
[server]
host = "127.0.0.1"
port = 0
access_keys = ["{ACCESS_KEY}"]
[database]
path = "{tmp_path / 'bridge.db'}"
[worker]
concurrency = 2
poll_interval_s = 0.2
retry_base_s = 0.2
retry_max_s = 0.5
max_attempts = 2
http_attempts = 2
http_backoff_s = 0.05
shutdown_grace_s = 5
[wordpress]
url = "{wp_stack['WPSB_WP_URL']}"
username = "{wp_stack['WPSB_WP_USER']}"
application_password = "{wp_stack['WPSB_WP_APP_PASSWORD']}"
allowed_roles = ["subscriber", "customer"]
[connections.customerly]
crm = "customerly"
base_url = "{fake_crm.customerly_base}"
secrets = {{ token = "{fake_crm.customerly_token}" }}
return_password_field = "wp_password"
""")
    return path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WPSB_")}


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args, "--config", str(config)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60)


class Run:
    """The serve process, its log file, and everything answered over HTTP."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config, self.log_path = config, log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.answers: list[str] = []
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--config", str(self.config)],
                                         cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.port:
            for line in self.log_path.read_text().splitlines():
                if '"bridge.started"' in line:
                    self.port = json.loads(line)["port"]
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log_path.read_text()
            await asyncio.sleep(0.1)
        self.session = aiohttp.ClientSession()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def request(self, method: str, path: str, body: bytes = b"", key: str | None = ACCESS_KEY,
                      key_in: str = "query", **query: str) -> tuple[int, dict | str]:
        params = dict(query)
        headers = {"Content-Type": "application/json"}
        if key is not None and key_in == "query":
            params["access_key"] = key
        elif key is not None:
            headers["X-Access-Key"] = key
        async with self.session.request(method, f"http://127.0.0.1:{self.port}{path}", params=params, data=body,
                                        headers=headers) as resp:
            text = await resp.text()
            self.answers.append(f"{resp.status} {dict(resp.headers)} {text}")
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def deliver(self, body: dict, **query: str) -> int:
        status, answer = await self.request("POST", "/", json.dumps(body).encode(), **query)
        assert status == 202, answer
        return answer["job_id"]

    async def wait_job(self, job_id: int, timeout_s: float = 60) -> dict:
        db = self.config.parent / "bridge.db"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                conn.row_factory = sqlite3.Row
                row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and row["status"] in ("done", "dead"):
                return dict(row)
            await asyncio.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish")


def _posted_password(fake_crm, email: str) -> str:
    """The wp_password the CRM received for ``email`` (the newest POST carrying it)."""
    posts = [r for r in fake_crm.requests_to("customerly") if r.method == "POST" and r.json
             and any(u.get("email") == email for u in r.json.get("users", []))]
    assert posts, f"the CRM never got a write-back for {email}"
    return posts[-1].json["users"][0]["attributes"]["wp_password"]


async def test_no_secret_anywhere_after_a_full_run(tmp_path, wp_stack, fake_crm):
    """Every secret that was really in play is absent from logs, answers, CLI output, /metrics and the database."""
    config = _config(tmp_path, wp_stack, fake_crm)
    run = Run(config, tmp_path / "serve.log")
    await run.start()
    try:
        # 1. An add: the password is generated, WordPress gets it, the CRM gets it back.
        ok_email = unique_email("secret-ok")
        fake_crm.add_customerly_user(ok_email, attributes={"first_name": "Ok"})
        ok_job = await run.wait_job(await run.deliver(customerly_delivery(ok_email), wpf_action="add"))
        assert ok_job["status"] == "done", ok_job
        ok_password = _posted_password(fake_crm, ok_email)
        assert WordPressProbe(wp_stack).user_count(ok_email) == 1

        # 2. The write-back is answered 503 then 400, both echoing the posted password.
        echo_email = unique_email("secret-echo")
        fake_crm.add_customerly_user(echo_email)
        fake_crm.fail("/customerly/v1/users", status=503, times=1, method="POST", echo=True)
        fake_crm.fail("/customerly/v1/users", status=400, times=1, method="POST", echo=True)
        echo_job = await run.wait_job(await run.deliver(customerly_delivery(echo_email), wpf_action="add"))
        assert echo_job["status"] == "dead" and "Invalid attributes" in echo_job["last_error"], echo_job
        echo_password = _posted_password(fake_crm, echo_email)
        echoed = [r for r in fake_crm.requests_to("customerly") if r.status in (400, 503) and echo_email in r.body.decode()]
        assert len(echoed) == 2 and all(echo_password in r.body.decode() for r in echoed)
        fake_crm.clear()

        # 3. Fetches answered 502 with the request (and its bearer token) echoed, until the job is dead.
        token_email = unique_email("secret-token")
        fake_crm.add_customerly_user(token_email)
        fake_crm.fail("/customerly/v1/users", status=502, times=20, method="GET", echo=True)
        token_job = await run.wait_job(await run.deliver(customerly_delivery(token_email), wpf_action="update"))
        assert token_job["status"] == "dead" and "Bearer" in token_job["last_error"], token_job
        assert any(r.headers.get("Authorization") == f"Bearer {fake_crm.customerly_token}"
                   for r in fake_crm.requests_to("customerly"))
        fake_crm.clear()

        # 4. Malformed requests carrying the key, wrong keys, the key in a header, a rejected delivery.
        for raw in MALFORMED:
            run.answers.append((await exchange(run.port, raw.replace("test-access-key-1", ACCESS_KEY).encode()))
                               .decode("utf-8", "replace"))
        await run.request("POST", "/", b"{}", key=ACCESS_KEY[:-1] + "x", wpf_action="add")
        await run.request("POST", "/", json.dumps(customerly_delivery(unique_email("hdr"))).encode(), key_in="header",
                          wpf_action="update")
        status, _ = await run.request("POST", "/", json.dumps(customerly_delivery("not-an-email")).encode(),
                                      wpf_action="add")
        assert status == 422
        await run.request("POST", "/hooks/nonexistent", b"{}", wpf_action="add")
        # 5. A delivery carrying a password-like field of its own (masked by `jobs show`).
        body_job = await run.deliver({**customerly_delivery(unique_email("body")),
                                      "extra": {"user_pass": BODY_PASSWORD}}, wpf_action="update_tags")
        await run.wait_job(body_job)
        for path in ("/metrics", "/readyz", "/healthz"):
            await run.request("GET", path)
        metrics = run.answers[-3]
        await run.session.close()
    finally:
        if run.session is not None and not run.session.closed:
            await run.session.close()
        run.stop()
        fake_crm.clear()

    secret_values = {
        "access key": ACCESS_KEY,
        "application password": wp_stack["WPSB_WP_APP_PASSWORD"],
        "CRM token": fake_crm.customerly_token,
        "generated password (written back)": ok_password,
        "generated password (echoed by the CRM)": echo_password,
    }
    logs = run.log_path.read_text()
    log_lines = logs.splitlines()
    assert len(log_lines) > 20
    for line in log_lines:
        json.loads(line)  # one JSON event per line, the stdlib loggers' included
    events = [json.loads(line)["event"] for line in log_lines]
    for event in ("job.done", "sync.written_back", "http.retry", "job.dead", "http.bad_request",
                  "delivery.forbidden", "delivery.rejected"):
        assert event in events, event

    cli_outputs = {}
    for args in (("jobs", "list"), ("jobs", "list", "--status", "dead"), ("rejected", "list"),
                 *(("jobs", "show", str(j)) for j in range(1, body_job + 1))):
        result = _cli(config, *args)
        assert result.returncode == 0, result.stderr
        cli_outputs[" ".join(args)] = result.stdout + result.stderr
    assert "Invalid attributes" in cli_outputs["jobs list --status dead"]

    with sqlite3.connect(tmp_path / "bridge.db") as conn:
        dump = "\n".join(conn.iterdump())  # every table, every row
    assert ok_email in dump and "Invalid attributes" in dump  # the dump does hold the run

    places = {"log": logs, "answers": "\n".join(run.answers), "database": dump, **cli_outputs}
    # A connection name nobody configured is counted, under one label, not as a series of its own.
    assert 'result="unknown_connection"} 1.0' in metrics and "nonexistent" not in metrics
    assert all(len(value) >= 8 for value in secret_values.values())
    leaks = [f"the {name} appears in {place}" for name, value in secret_values.items()
             for place, text in places.items() if value in text]
    assert not leaks, leaks
    shown_body = json.loads(cli_outputs[f"jobs show {body_job}"])
    assert shown_body["payload"]["body"]["extra"]["user_pass"] == "***"
    assert BODY_PASSWORD not in cli_outputs[f"jobs show {body_job}"]
