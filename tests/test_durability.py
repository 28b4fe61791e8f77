"""Durable acknowledgement at the process level: ``python -m bridge serve`` is SIGKILLed in the middle
of a burst, and every delivery it answered 202 must be in the database (the SQLite file, or the
PostgreSQL database) with its exact payload.

Then the bridge is restarted on the same file (it must start and keep the jobs) and stopped with
SIGTERM (it must exit 0 within its grace period).
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
from contextlib import closing
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "durability-access-key-1"
DELIVERIES = 300
CONCURRENCY = 32
KILL_AFTER = 200
GRACE_S = 5


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path: Path, port: int, database: str | None = None) -> Path:
    """A bridge on ``database`` (a postgresql:// URL), else on a SQLite file in ``tmp_path``."""
    path = tmp_path / "bridge.toml"
    where = f'url = "{database}"' if database else f'path = "{tmp_path / "bridge.db"}"'
    path.write_text(f"""
log_level = "info"
[server]
host = "127.0.0.1"
port = {port}
access_keys = ["{KEY}"]
[database]
{where}
[worker]
concurrency = 2
retry_base_s = 3600
retry_max_s = 7200
http_attempts = 1
shutdown_grace_s = {GRACE_S}
[wordpress]
url = "http://127.0.0.1:9"
application_password = "abcd efgh ijkl mnop"
timeout_s = 2
[connections.customerly]
crm = "customerly"
base_url = "http://127.0.0.1:9/customerly/v1"
secrets = {{ token = "cly-test-token" }}
""")
    return path


class Server:
    """One ``python -m bridge serve`` in its own process group, its output in a file."""

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--config", str(config)], cwd=ROOT,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    async def wait_healthy(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"bridge exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    async with session.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"bridge not healthy within {timeout_s} s:\n{self.log_tail()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Every server a test starts is killed (by process group) at the end, pass or fail."""
    started: list[Server] = []
    yield started
    for server in started:
        server.close()


def delivery(i: int) -> dict:
    return {"type": "user.updated", "data": {"user": {"data": {"email": f"burst-{i:04d}@example.com", "n": i}}}}


async def burst_then_kill(server: Server) -> tuple[dict[int, dict], int]:
    """Send DELIVERIES at CONCURRENCY; SIGKILL the group after KILL_AFTER 202s: ({job_id: body}, failed requests)."""
    acknowledged: dict[int, dict] = {}
    failed = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(DELIVERIES):
        queue.put_nowait(i)
    params = {"wpf_action": "add", "access_key": KEY}

    async def sender(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        while not queue.empty():
            body = delivery(queue.get_nowait())
            try:
                async with session.post(server.url + "/", params=params, json=body) as resp:
                    answer = await resp.json()
                    if resp.status == 202:
                        acknowledged[answer["job_id"]] = body
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError):
                failed += 1
                continue
            if len(acknowledged) == KILL_AFTER:
                server.signal_group(signal.SIGKILL)

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(sender(session) for _ in range(CONCURRENCY)))
    return acknowledged, failed


def read_jobs(db: Path | str) -> dict[int, dict]:
    """Every job in the database (a SQLite path or a postgresql:// URL), read outside the bridge."""
    if isinstance(db, str):
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(db, row_factory=dict_row) as conn:
            return {row["id"]: row for row in conn.execute("SELECT id, status, payload FROM jobs")}
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        return {row["id"]: dict(row) for row in conn.execute("SELECT id, status, payload FROM jobs")}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_every_acknowledged_delivery_survives_sigkill_and_restart(tmp_path, servers, backend, request):
    """SIGKILL mid-burst loses no delivery answered 202; a restart keeps them all; SIGTERM then exits 0 in the grace period."""
    port = free_port()
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    config = write_config(tmp_path, port, url)
    db_path = url or tmp_path / "bridge.db"
    first = Server(config, port, tmp_path / "first.log")
    servers.append(first)
    await first.wait_healthy()

    acknowledged, failed = await burst_then_kill(first)
    assert first.proc.wait(10) == -signal.SIGKILL
    assert len(acknowledged) >= KILL_AFTER, f"only {len(acknowledged)} answered before the kill:\n{first.log_tail()}"
    assert failed > 0, "the kill came after the burst was over: nothing was in flight"

    jobs = read_jobs(db_path)
    missing = sorted(set(acknowledged) - set(jobs))
    assert not missing, f"{len(missing)} acknowledged jobs are not in the database: {missing[:10]}"
    for job_id, body in acknowledged.items():
        payload = json.loads(jobs[job_id]["payload"])
        assert payload["email"] == body["data"]["user"]["data"]["email"]
        assert payload["body"] == body
    # Committed but never answered is allowed (the sender retries; dedupe absorbs it), lost is not.
    print(f"\n{len(acknowledged)} acknowledged, {len(jobs)} in the database, {failed} requests cut off by the kill")

    second = Server(config, port, tmp_path / "second.log")
    servers.append(second)
    await second.wait_healthy()
    after_restart = read_jobs(db_path)
    assert set(jobs) <= set(after_restart)
    assert all(after_restart[job_id]["status"] in ("queued", "running") for job_id in acknowledged)
    async with aiohttp.ClientSession() as session:
        async with session.get(second.url + "/metrics") as resp:
            assert resp.status == 200

    second.signal_group(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = second.proc.wait(GRACE_S + 5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within {GRACE_S + 5} s of SIGTERM:\n{second.log_tail()}") from None
    assert code == 0, second.log_tail()
    assert time.monotonic() - started <= GRACE_S + 5
    assert "bridge.stopped" in second.log_tail()
    assert len(read_jobs(db_path)) == len(after_restart)
