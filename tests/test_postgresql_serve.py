"""``serve`` on PostgreSQL as an operator runs it: the URL's password never appears in logs, CLI output
or metrics; when the server ends every session of the bridge (a failover, a restart of PostgreSQL),
intake answers 503 with Retry-After for what it could not commit, then 202 again, and the
listening loop says it failed and recovered; SIGTERM still exits 0."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import psycopg

from tests.test_durability import Server, free_port, servers, write_config  # noqa: F401 - fixture
from tests.test_store_copy import cli

PASSWORD = "Sekret-db-pw-8812"
KEY = "durability-access-key-1"


def with_password(url: str) -> str:
    """The same database with a password in the URL (trust auth here: the server never asks for it)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


async def deliver(session: aiohttp.ClientSession, server: Server, n: int) -> int:
    body = {"type": "user.updated", "data": {"user": {"data": {"email": f"pg-{n}@example.com"}}}}
    params = {"wpf_action": "add", "access_key": KEY}
    async with session.post(server.url + "/", params=params, json=body) as resp:
        answer = await resp.json()
        if resp.status == 503:
            assert answer["error"] == "unavailable" and resp.headers["Retry-After"], answer
        return resp.status


async def test_serve_on_postgresql_survives_lost_sessions_and_never_shows_the_password(tmp_path, servers,
                                                                                      pg_url):
    url = with_password(pg_url)
    port = free_port()
    config = write_config(tmp_path, port, url)
    server = Server(config, port, tmp_path / "serve.log")
    servers.append(server)
    await server.wait_healthy()
    async with aiohttp.ClientSession() as session:
        assert [await deliver(session, server, n) for n in range(10)] == [202] * 10
        with psycopg.connect(pg_url, autocommit=True) as admin:
            ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                  " WHERE application_name LIKE 'wp-sync-bridge%'").fetchone()[0]
        assert ended >= 3  # writer, reader, listener
        statuses = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and statuses[-3:] != [202] * 3:
            statuses.append(await deliver(session, server, 100 + len(statuses)))
        assert statuses[-3:] == [202] * 3 and set(statuses) <= {202, 503}, statuses
        async with session.get(server.url + "/readyz") as resp:
            ready = await resp.json()
        assert ready["database"] is True, ready  # the reader reconnected at once
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not ready["loops"].get("database_listen"):
            await asyncio.sleep(0.5)
            async with session.get(server.url + "/readyz") as resp:
                ready = await resp.json()
        assert ready["loops"]["database_listen"] is True, ready
        async with session.get(server.url + "/metrics") as resp:
            metrics = await resp.text()
    log = server.log_tail(1_000_000)
    assert "loop.failed" in log and "loop.recovered" in log, log[-3000:]
    outputs = [cli(*args, "-c", str(config)) for args in (["jobs", "list"], ["doctor", "--offline"])]
    assert "pg-1@example.com" in outputs[0].stdout, outputs[0].stderr
    assert "database.url" in outputs[1].stdout
    seen = log + metrics + "".join(o.stdout + o.stderr for o in outputs)
    assert PASSWORD not in seen
    server.signal_group(signal.SIGTERM)
    assert server.proc.wait(15) == 0, server.log_tail()
