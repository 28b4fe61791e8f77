"""Crash recovery and ordering against the real WordPress: SIGKILL the serving process right
after a burst of acknowledged deliveries, restart it, and find every delivery applied exactly once;
a contact's concurrent deliveries are applied in arrival order."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ACCESS_KEY, bridge_config, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress
ROOT = Path(__file__).resolve().parent.parent

PLAIN = {"crm": "generic", "fetch_contact": False, "connector": {
    "contact_id_paths": ["contact.email"], "email_paths": ["contact.email"], "record_path": "contact",
    "fields": {"email": "user_email", "first_name": "first_name", "last_name": "last_name"}, "meta_prefix": "plain"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, tmp_path: Path, wp_stack, fake_crm, port: int) -> None:
    cfg = bridge_config(tmp_path, wp_stack, fake_crm, connections={"plain": PLAIN})
    lines = ['log_format = "json"', "[server]", 'host = "127.0.0.1"', f"port = {port}", f'access_keys = ["{ACCESS_KEY}"]',
             "[database]", f'path = "{cfg["database"]["path"]}"', "[worker]", "concurrency = 4", "poll_interval_s = 0.2",
             "[wordpress]"]
    lines += [f'{k} = "{v}"' for k, v in cfg["wordpress"].items() if isinstance(v, str)]
    lines += ['allowed_roles = ["subscriber", "customer"]', "[connections.plain]", 'crm = "generic"', "fetch_contact = false",
              "[connections.plain.connector]", 'contact_id_paths = ["contact.email"]', 'email_paths = ["contact.email"]',
              'record_path = "contact"', 'meta_prefix = "plain"', "[connections.plain.connector.fields]",
              'email = "user_email"', 'first_name = "first_name"', 'last_name = "last_name"']
    path.write_text("\n".join(lines) + "\n")


class Server:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--config", str(self.config)], cwd=ROOT,
                                     stdout=self.log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                try:
                    async with s.get(f"http://127.0.0.1:{self.port}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        raise AssertionError(f"bridge did not start: {self.log.read_text()[-2000:]}")

    def kill(self, sig: int) -> int:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        return self.proc.wait(30) if self.proc else 0


@pytest.fixture
def server_factory(tmp_path, wp_stack, fake_crm):
    started: list[Server] = []

    def make() -> Server:
        port = free_port()
        config = tmp_path / "bridge.toml"
        write_config(config, tmp_path, wp_stack, fake_crm, port)
        server = Server(config, port, tmp_path / "bridge.log")
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill(signal.SIGKILL)


async def test_sigkill_after_acknowledged_burst_loses_nothing_and_applies_once(server_factory, tmp_path, wp_stack):
    """Every delivery answered 202 before a SIGKILL is applied after the restart, exactly once."""
    server = server_factory()
    await server.start()
    emails = [unique_email(f"crash{i}") for i in range(60)]
    acked: list[str] = []
    async with aiohttp.ClientSession() as s:
        async def send(email: str) -> None:
            url = f"http://127.0.0.1:{server.port}/hooks/plain"
            body = {"contact": {"email": email, "first_name": "Crash", "last_name": email[:12]}}
            async with s.post(url, params={"wpf_action": "add", "access_key": ACCESS_KEY}, json=body) as r:
                if r.status == 202:
                    acked.append(email)
        await asyncio.gather(*(send(e) for e in emails))
    assert server.kill(signal.SIGKILL) == -signal.SIGKILL
    assert len(acked) == len(emails)

    db = sqlite3.connect(tmp_path / "bridge.db")
    pending = db.execute("SELECT COUNT(*) FROM jobs WHERE status != 'done'").fetchone()[0]
    db.close()
    restarted = server_factory()
    await restarted.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        db = sqlite3.connect(tmp_path / "bridge.db")
        states = dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        db.close()
        if set(states) == {"done"}:
            break
        await asyncio.sleep(0.2)
    assert states == {"done": len(emails)}, states
    wp = WordPressProbe(wp_stack)
    counts = {email: wp.user_count(email) for email in acked}
    assert set(counts.values()) == {1}, {e: n for e, n in counts.items() if n != 1}
    print(f"{pending} of {len(emails)} jobs were still pending at the SIGKILL")
    assert restarted.kill(signal.SIGTERM) == 0


async def test_a_contacts_concurrent_deliveries_apply_in_arrival_order(tmp_path, wp_stack, fake_crm, start_bridge):
    """Ten concurrent updates of one contact end with the data of the last one accepted."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, connections={"plain": PLAIN}))
    email = unique_email("order")
    _, first = await b.send({"contact": {"email": email, "first_name": "v0"}}, path="/hooks/plain", wpf_action="add")
    await b.wait_job(first["job_id"])
    answers = await asyncio.gather(*(
        b.send({"contact": {"email": email, "first_name": f"v{i}"}}, path="/hooks/plain", wpf_action="update")
        for i in range(1, 11)
    ))
    job_ids = sorted(a["job_id"] for _, a in answers)
    jobs = [await b.wait_job(j) for j in job_ids]
    last = max(answers, key=lambda sa: sa[1]["job_id"])
    expected = None
    for job in jobs:
        if job["id"] == last[1]["job_id"]:
            expected = job["payload"]["body"]["contact"]["first_name"]
    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(email)
    assert user["first_name"] == expected
    assert all(j["status"] == "done" for j in jobs)
    merged = [j for j in jobs if (j["outcome"] or {}).get("coalesced_into")]
    heads = [j for j in jobs if not (j["outcome"] or {}).get("coalesced_into")]
    assert len(heads) + len(merged) == 10
