"""`make demo`: the bridge against a local WordPress and a fake Customerly, start to finish.

Starts the local WordPress stack (scripts/wordpress-stack) and a fake CRM seeded with a few
contacts, runs `wp-sync-bridge serve` with a generated config, sends WP Fusion-style webhooks,
waits for the jobs, and prints the WordPress users they made. Everything it started is stopped at
the end (the WordPress stack too, unless it was already running or KEEP=1 is set).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "scripts" / "wordpress-stack"
WORK = ROOT / ".demo"
PY = sys.executable
KEY = "demo-access-key-123"
CRM_TOKEN = "cly-test-token"
CONTACTS = ["ada@example.com", "grace@example.com", "linus@example.com"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered: up
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: {url} did not answer within {timeout_s:g} s")


def call(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    WORK.mkdir(exist_ok=True)
    for old in WORK.glob("bridge.db*"):
        old.unlink()  # a fresh queue each run (WordPress keeps its users: a re-run shows updates)
    was_running = subprocess.run([str(STACK), "status"], capture_output=True).returncode == 0
    print("1. local WordPress" + (" (already running)" if was_running else ": starting (installs packages on first use)"), flush=True)
    up = subprocess.run([str(STACK), "up"], capture_output=True, text=True)
    if up.returncode != 0:
        raise SystemExit(f"demo: wordpress-stack up failed:\n{up.stdout}{up.stderr}")
    env = dict(line.split("=", 1) for line in subprocess.run([str(STACK), "env"], capture_output=True, text=True, check=True).stdout.split())
    procs: list[subprocess.Popen] = []
    try:
        crm_port, bridge_port = free_port(), free_port()
        print(f"2. fake Customerly on 127.0.0.1:{crm_port}, seeded with {', '.join(CONTACTS)}", flush=True)
        procs.append(start([PY, "-m", "tests.fakes.crm", "--port", str(crm_port), "--seed-demo"], WORK / "fake-crm.log"))
        wait_http(f"http://127.0.0.1:{crm_port}/customerly/v1/users?email=x")
        config = WORK / "config.toml"
        config.write_text(f"""
log_format = "console"
[server]
host = "127.0.0.1"
port = {bridge_port}
access_keys = ["{KEY}"]
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
base_url = "http://127.0.0.1:{crm_port}/customerly/v1"
secrets = {{ token = "{CRM_TOKEN}" }}
return_password_field = "wp_password"
""")
        print(f"3. wp-sync-bridge serve on 127.0.0.1:{bridge_port} (log: .demo/bridge.log)", flush=True)
        procs.append(start([PY, "-m", "bridge", "serve", "--config", str(config)], WORK / "bridge.log"))
        wait_http(f"http://127.0.0.1:{bridge_port}/healthz")

        mails = Path(env["WPSB_WP_MAIL_LOG"])
        mails_before = len(mails.read_text().splitlines()) if mails.exists() else 0
        base = f"http://127.0.0.1:{bridge_port}/"
        sends = [
            ("add", CONTACTS[0], {"role": "customer", "send_notification": "true"}),
            ("add", CONTACTS[1], {}),
            ("add", CONTACTS[2], {"role": "administrator"}),
            ("update_tags", CONTACTS[0], {}),
        ]
        print("4. webhooks, as Customerly would send them to a WP Fusion site:", flush=True)
        jobs = []
        for action, email, extra in sends:
            query = {"wpf_action": action, "access_key": KEY, **extra}
            status, answer = call("POST", base + "?" + urllib.parse.urlencode(query), {"data": {"user": {"data": {"email": email}}}})
            shown = "&".join(f"{k}={'***' if k == 'access_key' else v}" for k, v in query.items())
            print(f"   POST /?{shown}  {email:<20} → {status} {json.dumps(answer)}")
            jobs.append(answer.get("job_id"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run([PY, "-m", "bridge", "jobs", "list", "--config", str(config)], cwd=ROOT, capture_output=True, text=True).stdout
            if "queued" not in out and "running" not in out:
                break
            time.sleep(0.3)
        print("5. the queue afterwards (wp-sync-bridge jobs list):")
        print("\n".join("   " + line.strip() for line in out.strip().splitlines()))
        print("6. the WordPress users the bridge made:")
        import base64

        auth = base64.b64encode(f"{env['WPSB_WP_USER']}:{env['WPSB_WP_APP_PASSWORD']}".encode()).decode()
        for email in CONTACTS:
            status, user = call("GET", env["WPSB_WP_URL"] + "/?" + urllib.parse.urlencode({
                "rest_route": "/wp-sync-bridge/v1/users/lookup", "email": email, "tags_key": "customerly_tags"}),
                headers={"Authorization": f"Basic {auth}"})
            u = (user or {}).get("user") or {}
            print(f"   #{u.get('id')}  {u.get('login', '-'):<20} {u.get('email', email):<20} roles={u.get('roles')} "
                  f"name={u.get('first_name', '')} {u.get('last_name', '')} tags={u.get('tags')}")
        sent = [json.loads(line)["to"] for line in mails.read_text().splitlines()[mails_before:]] if mails.exists() else []
        print(f"7. welcome mails captured in this run: {len(sent)} ({', '.join(map(str, sent)) or 'none'}); "
              "only a create with send_notification=true sends one")
        print(f"   the generated passwords were written back to Customerly's wp_password attribute (see .demo/fake-crm.log)")
    finally:
        for proc in reversed(procs):
            stop(proc)
        if not was_running and not os.environ.get("KEEP"):
            subprocess.run([str(STACK), "down"], capture_output=True)
            print("stopped the bridge, the fake CRM and the local WordPress (KEEP=1 keeps WordPress running)")
        else:
            print("stopped the bridge and the fake CRM; the local WordPress keeps running (scripts/wordpress-stack down)")


if __name__ == "__main__":
    main()
