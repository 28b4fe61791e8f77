"""Shared fixtures: the real local WordPress (started once per session by scripts/wordpress-stack),
the fake CRMs, and an in-process bridge on a real SQLite file.

Quick iteration against a stack that already runs: ``scripts/wordpress-stack up`` then
``WPSB_TEST_STACK=running .venv/bin/python -m pytest``: the suite uses it and leaves it running.
By default the suite starts its own stack in ``.stack-test`` on other ports and purges it at the end;
``WPSB_STACK_DIR``, ``WPSB_DB_PORT`` and ``WPSB_WP_PORT`` choose another directory and ports.

``WPSB_WP_LINE`` chooses the WordPress: ``6.1`` (Debian 12's package, the default) or ``6.8``
(Debian 13's, which hashes passwords with bcrypt). ``make test`` runs the whole suite on 6.1, then
the tests marked ``wordpress`` on 6.8 (less the wheel, the demo and the systemd unit), each on a
fresh stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from bridge.app import Bridge
from bridge.settings import load_settings
from tests.pg import pg_database, pg_url  # noqa: F401 - fixtures


ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "scripts" / "wordpress-stack"
ACCESS_KEY = "test-access-key-1"


def _read_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.removeprefix("export ").strip()] = value.strip().strip("'\"")
    return env


@pytest.fixture(scope="session")
def wp_stack() -> dict[str, str]:
    """The WordPress stack's environment (URL, credentials, mail log); started here unless running."""
    if os.environ.get("WPSB_TEST_STACK") == "running":
        out = subprocess.run([str(STACK), "env"], check=True, capture_output=True, text=True)
        running = _read_env(out.stdout)
        wanted = os.environ.get("WPSB_WP_LINE")
        if wanted and running.get("WPSB_WP_LINE", "6.1") != wanted:
            raise RuntimeError(f"the running stack is WordPress {running.get('WPSB_WP_VERSION', '6.1')}, "
                               f"but WPSB_WP_LINE={wanted} asks for another line")
        yield running
        return
    # The stack's own variables choose where it lives and which ports it takes (several checkouts
    # can test side by side); the defaults keep clear of a development stack's.
    env = {
        **os.environ,
        "WPSB_STACK_DIR": os.environ.get("WPSB_STACK_DIR") or str(ROOT / ".stack-test"),
        "WPSB_DB_PORT": os.environ.get("WPSB_DB_PORT") or "33326",
        "WPSB_WP_PORT": os.environ.get("WPSB_WP_PORT") or "8806",
        "WPSB_WP_LINE": os.environ.get("WPSB_WP_LINE") or "6.1",
    }
    subprocess.run([str(STACK), "purge"], env=env, check=False, capture_output=True)
    started = time.monotonic()
    up = subprocess.run([str(STACK), "up"], env=env, capture_output=True, text=True)
    if up.returncode != 0:
        raise RuntimeError(f"wordpress-stack up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    out = subprocess.run([str(STACK), "env"], env=env, check=True, capture_output=True, text=True)
    stack = _read_env(out.stdout)
    print(f"\nWordPress {stack['WPSB_WP_VERSION']} stack up in {time.monotonic() - started:.1f} s")
    try:
        yield stack
    finally:
        subprocess.run([str(STACK), "purge"], env=env, check=False, capture_output=True)


@pytest.fixture(scope="session")
async def fake_crm() -> AsyncIterator["FakeCRM"]:
    """One fake CRM server for the session (Customerly, User.com, Rownd, generic)."""
    from tests.fakes.crm import FakeCRM

    crm = FakeCRM()
    await crm.start()
    yield crm
    await crm.stop()


class MailLog:
    """The mails WordPress "sent", captured by the test-only mu-plugin."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def to(self, address: str) -> list[dict[str, Any]]:
        """Captured mails whose recipient is ``address``."""
        if not self.path.exists():
            return []
        mails = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        out = []
        for mail in mails:
            to = mail.get("to")
            recipients = to if isinstance(to, list) else [to]
            if any(str(r).lower() == address.lower() for r in recipients):
                out.append(mail)
        return out


@pytest.fixture(scope="session")
def mail_log(wp_stack) -> MailLog:
    return MailLog(wp_stack["WPSB_WP_MAIL_LOG"])


def unique_email(prefix: str = "user") -> str:
    """An address no other test (or earlier run against the same stack) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def bridge_config(tmp_path: Path, wp_stack: dict[str, str], crm: "FakeCRM", transport: str = "rest", **extra: Any) -> dict[str, Any]:
    """A settings dict for a bridge talking to the test WordPress and the fake CRMs."""
    config: dict[str, Any] = {
        "log_format": "console",
        "server": {"host": "127.0.0.1", "port": 0, "access_keys": [ACCESS_KEY]},
        "database": {"path": str(tmp_path / "bridge.db")},
        "worker": {"concurrency": 4, "poll_interval_s": 0.2, "retry_base_s": 0.2, "retry_max_s": 1.0,
                   "http_backoff_s": 0.05, "shutdown_grace_s": 5},
        "wordpress": {
            "url": wp_stack["WPSB_WP_URL"], "username": wp_stack["WPSB_WP_USER"],
            "application_password": wp_stack["WPSB_WP_APP_PASSWORD"], "transport": transport,
            "allowed_roles": ["subscriber", "customer"],
        },
        "connections": {
            "customerly": {"crm": "customerly", "base_url": crm.customerly_base,
                           "secrets": {"token": "cly-test-token"}, "return_password_field": "wp_password"},
        },
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class RunningBridge:
    """A started Bridge plus helpers to send deliveries and wait for their jobs."""

    def __init__(self, bridge: Bridge, session: aiohttp.ClientSession) -> None:
        self.bridge = bridge
        self.session = session
        self.url = f"http://127.0.0.1:{bridge.port}"

    async def send(self, body: Any, *, path: str = "/", method: str = "POST", **query: str) -> tuple[int, dict]:
        """Send one delivery with the access key; returns (status, JSON answer)."""
        params = {"access_key": ACCESS_KEY, **query}
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        async with self.session.request(method, self.url + path, params=params, data=data,
                                        headers={"Content-Type": "application/json"}) as resp:
            return resp.status, await resp.json()

    async def wait_job(self, job_id: int, timeout_s: float = 30.0, states=("done", "dead")) -> dict[str, Any]:
        """Wait until a job is done or dead and return it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = await self.bridge.store.get_job(job_id)
            if job and job["status"] in states:
                return job
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} not finished within {timeout_s} s: {await self.bridge.store.get_job(job_id)}")


@pytest.fixture
async def start_bridge(tmp_path) -> AsyncIterator:
    """A factory: ``await start_bridge(config_dict)`` → RunningBridge, stopped after the test."""
    started: list[tuple[Bridge, aiohttp.ClientSession]] = []

    async def start(config: dict[str, Any]) -> RunningBridge:
        bridge = Bridge(load_settings(None, **config))
        await bridge.start()
        session = aiohttp.ClientSession()
        started.append((bridge, session))
        return RunningBridge(bridge, session)

    yield start
    for bridge, session in started:
        await session.close()
        await bridge.stop()


def customerly_delivery(email: str) -> dict[str, Any]:
    """A Customerly webhook body (the email at data.user.data.email)."""
    return {"type": "user.updated", "data": {"user": {"data": {"email": email}}}}
