"""`make demo`: the whole story of the bridge, against a local WordPress and fake CRMs.

Starts the local WordPress stack (scripts/wordpress-stack), fake Customerly, User.com and Rownd
APIs (tests/fakes/crm.py, in this process) and `wp-sync-bridge serve` with a generated config; then
sends what the CRMs would send: a Customerly add (send_notification=true, role=customer), update and
update_tags; a User.com new user; a Rownd insert, update, visibility update and delete; a bad
access key; a job that dies (the CRM refuses the token once) and is requeued with
`wp-sync-bridge jobs requeue`. It ends with a table of the WordPress users and of what each CRM
received back, and stops everything it started, by the PIDs it started (the WordPress stack too,
unless it was already running or KEEP=1 is set).

Environment: WPSB_STACK_DIR, WPSB_DB_PORT, WPSB_WP_PORT choose the stack (scripts/wordpress-stack);
WPSB_DEMO_DIR the demo's own files (default .demo: config, database, the bridge's log).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.clients.http import basic_auth  # noqa: E402
from bridge.store import queue as q  # noqa: E402
from tests.fakes.crm import FakeCRM  # noqa: E402
from tests.wp import WordPressProbe  # noqa: E402

STACK = ROOT / "scripts" / "wordpress-stack"
WORK = Path(os.environ.get("WPSB_DEMO_DIR") or ROOT / ".demo")
PY = sys.executable
KEY = "demo-access-key-123"
RUN = uuid.uuid4().hex[:6]  # WordPress keeps its users between runs: new addresses each run
ADA, GRACE, UNA, JULES = (f"{name}-{RUN}@example.com" for name in ("ada", "grace", "una", "jules"))
ROWND_ID = f"rownd-{RUN}"
JOB_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(text: str = "") -> None:
    print(text, flush=True)


def stack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(STACK), *args], capture_output=True, text=True)


def config_text(env: dict[str, str], crm: FakeCRM, port: int) -> str:
    return f"""
log_level = "info"
[server]
host = "127.0.0.1"
port = {port}
access_keys = ["{KEY}"]
default_connection = "customerly"
[database]
path = "{WORK / 'bridge.db'}"
[worker]
poll_interval_s = 0.2
[wordpress]
url = "{env['WPSB_WP_URL']}"
username = "{env['WPSB_WP_USER']}"
application_password = "{env['WPSB_WP_APP_PASSWORD']}"
allowed_roles = ["subscriber", "customer"]

[connections.customerly]
crm = "customerly"
base_url = "{crm.customerly_base}"
secrets = {{ token = "{crm.customerly_token}" }}
return_password_field = "wp_password"

[connections.usercom]
crm = "usercom"
base_url = "{crm.usercom_base}"
secrets = {{ token = "{crm.usercom_key}" }}
return_password_field = "wp_password"
return_fields = {{ user_id = "wp_user_id" }}

[connections.rownd]
crm = "rownd"
base_url = "{crm.rownd_base}"
secrets = {{ app_key = "{crm.rownd_app_key}", app_secret = "{crm.rownd_app_secret}", app_id = "demo-app" }}
return_password_field = "wp_password"
delete_policy = "remove_roles"
"""


class Demo:
    """One run: the bridge process, the fake CRMs, and helpers to send and to wait."""

    def __init__(self, env: dict[str, str], crm: FakeCRM, port: int, config: Path) -> None:
        self.env, self.crm, self.config = env, crm, config
        self.base = f"http://127.0.0.1:{port}"
        self.http = aiohttp.ClientSession()
        self.db: sqlite3.Connection | None = None

    async def send(self, path: str, body: Any, key: str = KEY, **query: str) -> tuple[int, dict]:
        params = {**query, "access_key": key}
        async with self.http.post(self.base + path, params=params, json=body) as resp:
            answer = await resp.json()
        shown = "&".join(f"{k}={'***' if k == 'access_key' else v}" for k, v in params.items())
        say(f"     POST {path}?{shown}\n       → {resp.status} {json.dumps(answer)}")
        return resp.status, answer

    def job(self, job_id: int) -> dict:
        if self.db is None:  # read-only: the daemon owns the database
            self.db = sqlite3.connect(f"file:{WORK / 'bridge.db'}?mode=ro", uri=True, timeout=10)
            self.db.row_factory = sqlite3.Row
        return q.get_job(self.db, job_id)

    async def wait(self, job_id: int, states: tuple[str, ...] = ("done", "dead")) -> dict:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job and job["status"] in states:
                outcome = job["outcome"] or {}
                shown = ("outcome", "user_id", "role", "redacted", "written_back")
                detail = {k: outcome[k] for k in shown if outcome.get(k)}
                say(f"       job {job_id}: {job['status']} {json.dumps(detail)}"
                    + (f" — {job['last_error']}" if job["status"] == "dead" else ""))
                return job
            await asyncio.sleep(0.1)
        raise SystemExit(f"demo: job {job_id} did not finish within {JOB_TIMEOUT_S} s (see {WORK / 'bridge.log'})")

    async def deliver(self, path: str, body: Any, **query: str) -> dict:
        status, answer = await self.send(path, body, **query)
        if status != 202:
            raise SystemExit(f"demo: the bridge answered {status}: {answer}")
        return await self.wait(answer["job_id"])

    def cli(self, *args: str) -> str:
        result = subprocess.run([PY, "-m", "bridge", *args, "--config", str(self.config)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        say(f"     $ wp-sync-bridge {' '.join(args)}")
        for line in (result.stdout + result.stderr).strip().splitlines():
            say(f"       {line}")
        return result.stdout

    async def close(self) -> None:
        await self.http.close()
        if self.db is not None:
            self.db.close()


async def customerly(demo: Demo) -> None:
    crm = demo.crm
    say("\n4. Customerly (WP Fusion's URL contract on /): add, update, update_tags")
    crm.add_customerly_user(ADA, name="Ada Lovelace", tags=["newsletter"],
                            attributes={"first_name": "Ada", "last_name": "Lovelace", "company": "Analytical Engines"})
    say(f"   a. add {ADA}, role=customer, send_notification=true (the bridge fetches the contact, "
        "creates the user, mails the welcome, writes the generated password back)")
    await demo.deliver("/", {"data": {"user": {"data": {"email": ADA}}}}, wpf_action="add",
                       role="customer", send_notification="true")
    crm.add_customerly_user(ADA, name="Ada King", attributes={"first_name": "Ada", "last_name": "King",
                                                               "company": "Analytical Engines"})
    say("   b. update: the contact's last name changed in Customerly (Lovelace → King)")
    await demo.deliver("/", {"data": {"user": {"data": {"email": ADA}}}}, wpf_action="update")
    crm.add_customerly_user(ADA, tags=["newsletter", "vip"])
    say("   c. update_tags: Customerly tagged her vip")
    await demo.deliver("/", {"data": {"user": {"data": {"email": ADA}}}}, wpf_action="update_tags")


async def usercom(demo: Demo) -> None:
    say("\n5. User.com: an automation posts the new user's id; the bridge GETs users/{id}/")
    user = demo.crm.add_usercom_user(email=UNA, first_name="Una", last_name="Com", tags=["lead", "paid"])
    await demo.deliver("/hooks/usercom", {"user": {"id": user["id"]}}, wpf_action="add")


def rownd_event(operation: str, data: dict, redacted: list[str] | None = None) -> dict:
    return {"data": {"user_id": ROWND_ID, **data}, "redacted": redacted or [],
            "meta": {"operation": operation, "lookup_values": [{"field": "email", "value": JULES}]}}


async def rownd(demo: Demo) -> None:
    say("\n6. Rownd: insert, update, visibility update (a redacted field is never written), delete")
    say("   a. data_insert")
    await demo.deliver("/hooks/rownd", rownd_event("data_insert", {"email": JULES, "first_name": "Juliet",
                                                                   "last_name": "Rose"}))
    say("   b. data_update: first name Juliet → Jules")
    await demo.deliver("/hooks/rownd", rownd_event("data_update", {"email": JULES, "first_name": "Jules",
                                                                   "last_name": "Rose"}))
    say("   c. visibility_update: first name Jay, last_name now <<REDACTED>> (WordPress keeps Rose)")
    await demo.deliver("/hooks/rownd", rownd_event("visibility_update", {"email": JULES, "first_name": "Jay",
                                                                         "last_name": "<<REDACTED>>"}, ["last_name"]))
    say("   d. delete: delete_policy = remove_roles (the account stays, without roles)")
    await demo.deliver("/hooks/rownd", rownd_event("delete", {}))


async def refusals(demo: Demo) -> None:
    say("\n7. A wrong access key: refused before the body is read, nothing stored")
    await demo.send("/", {"data": {"user": {"data": {"email": ADA}}}}, key="not-the-key", wpf_action="add")
    say("\n8. A dead job, requeued: Customerly refuses the bridge's token (HTTP 401, once)")
    demo.crm.add_customerly_user(GRACE, name="Grace Hopper", tags=["beta"],
                                 attributes={"first_name": "Grace", "last_name": "Hopper"})
    demo.crm.fail("/customerly/v1/users", status=401, times=1, method="GET",
                  body={"error": {"message": "Unauthorized", "code": 401}})
    job = await demo.deliver("/", {"data": {"user": {"data": {"email": GRACE}}}}, wpf_action="add")
    demo.cli("jobs", "list", "--status", "dead")
    say("   the token is fixed (the fake answers normally again): requeue it")
    demo.cli("jobs", "requeue", str(job["id"]))
    await demo.wait(job["id"], ("done",))


async def users_table(demo: Demo) -> list[dict]:
    say("\n9. The WordPress users (read back from WordPress)")
    env = demo.env
    rows = []
    headers = {"Authorization": basic_auth(env["WPSB_WP_USER"], env["WPSB_WP_APP_PASSWORD"])}
    for email, crm in ((ADA, "customerly"), (GRACE, "customerly"), (UNA, "usercom"), (JULES, "rownd")):
        params = {"rest_route": "/wp-sync-bridge/v1/users/lookup", "email": email, "tags_key": f"{crm}_tags"}
        async with demo.http.get(env["WPSB_WP_URL"] + "/", params=params, headers=headers) as resp:
            user = ((await resp.json()) or {}).get("user") or {}
        rows.append({"id": user.get("id"), "login": user.get("login"), "email": email, "crm": crm,
                     "name": f"{user.get('first_name') or ''} {user.get('last_name') or ''}".strip(),
                     "roles": ",".join(user.get("roles") or []) or "(none)",
                     "tags": ",".join(user.get("tags") or []) or "-"})
    cols = [("id", 4), ("email", 26), ("crm", 10), ("name", 14), ("roles", 10), ("tags", 16)]
    say("   " + "  ".join(f"{name:<{width}}" for name, width in cols))
    say("   " + "  ".join("-" * width for _, width in cols))
    for row in rows:
        say("   " + "  ".join(f"{str(row[name]):<{width}}" for name, width in cols))
    return rows


async def received_back(demo: Demo, rows: list[dict]) -> None:
    say("\n10. What each CRM received back (generated passwords shown masked; each one logs in)")
    probe = WordPressProbe(demo.env)
    logins = {row["email"]: row["login"] for row in rows}
    for rec in demo.crm.requests:
        if rec.method not in ("POST", "PATCH") or rec.status >= 300 or not isinstance(rec.json, dict):
            continue
        if rec.crm == "customerly":
            email, fields = rec.json["users"][0]["email"], rec.json["users"][0].get("attributes", {})
        elif rec.crm == "usercom" and rec.path.endswith("/set_multiple_attributes/"):
            email, fields = UNA, rec.json
        elif rec.crm == "rownd":
            email, fields = JULES, rec.json.get("data", {})
        else:
            continue
        shown = []
        for name, value in fields.items():
            if "password" in name:
                works = await probe.can_log_in(logins.get(email) or email, str(value))
                shown.append(f"{name}=*** ({len(str(value))} chars, logs in: {'yes' if works else 'NO'})")
            else:
                shown.append(f"{name}={value}")
        say(f"   {rec.crm:<10} {rec.method:<5} {rec.path:<58} {email}: {', '.join(shown)}")


async def story(env: dict[str, str]) -> None:
    crm = FakeCRM()
    await crm.start()
    say(f"2. fake Customerly, User.com and Rownd APIs on {crm.url}")
    port = free_port()
    config = WORK / "config.toml"
    config.write_text(config_text(env, crm, port))
    say(f"3. wp-sync-bridge serve on 127.0.0.1:{port} (log: {WORK / 'bridge.log'})")
    log = (WORK / "bridge.log").open("w")
    bridge = subprocess.Popen([PY, "-m", "bridge", "serve", "--config", str(config)], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    demo = Demo(env, crm, port, config)
    try:
        await wait_healthy(demo, bridge)
        mail_log = Path(env["WPSB_WP_MAIL_LOG"])
        mails_before = len(mail_log.read_text().splitlines()) if mail_log.exists() else 0
        await customerly(demo)
        await usercom(demo)
        await rownd(demo)
        await refusals(demo)
        rows = await users_table(demo)
        await received_back(demo, rows)
        mails = [to for line in mail_log.read_text().splitlines()[mails_before:] for to in recipients(line)]
        say(f"\n11. Welcome mails WordPress sent in this run: {len(mails)} ({', '.join(mails) or 'none'}): "
            "only the add with send_notification=true sends one")
    finally:
        await demo.close()
        stop_process(bridge)
        log.close()
        await crm.stop()


def recipients(mail_line: str) -> list[str]:
    """The recipients of one captured mail (the capture plugin writes "to" as wp_mail got it)."""
    to = json.loads(mail_line)["to"]
    return [str(t) for t in to] if isinstance(to, list) else [str(to)]


async def wait_healthy(demo: Demo, bridge: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if bridge.poll() is not None:
            raise SystemExit(f"demo: the bridge exited with {bridge.returncode}:\n{(WORK / 'bridge.log').read_text()}")
        try:
            async with demo.http.get(demo.base + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("demo: the bridge did not answer /healthz within 30 s")


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of a process this demo started (its PID), SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    started = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    for old in WORK.glob("bridge.db*"):
        old.unlink()  # a fresh queue each run
    was_running = stack("status").returncode == 0
    say("1. local WordPress" + (" (already running)" if was_running else ": starting (installs packages on first use)"))
    up = stack("up")
    if up.returncode != 0:
        raise SystemExit(f"demo: wordpress-stack up failed:\n{up.stdout}{up.stderr}")
    env = dict(line.split("=", 1) for line in stack("env").stdout.split())
    try:
        asyncio.run(story(env))
    finally:
        if not was_running and not os.environ.get("KEEP"):
            stack("down")
            say("\nstopped the bridge, the fake CRMs and the local WordPress (KEEP=1 keeps WordPress running)")
        else:
            say("\nstopped the bridge and the fake CRMs; the local WordPress keeps running (scripts/wordpress-stack down)")
    say(f"demo done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
