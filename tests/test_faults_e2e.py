"""The database broken under the running bridge, then repaired: no loop dies, readiness and the
metrics say what is wrong meanwhile, and every job runs once the database is back.

Faults are real, not mocked: the writer child is SIGKILLed while a claim waits on it, and the
writer's writes are refused by the kernel. For the second, no small tmpfs is available here, and
``PRAGMA max_page_count`` does not stop SQLite writing (updates in place and the WAL do not grow
the page count), so the writer process gets ``RLIMIT_FSIZE`` = 1 byte through ``prlimit(2)``: from
then on every ``write(2)`` of it past the first byte of a file fails with EFBIG (Python ignores
SIGXFSZ), exactly as a write into a full disk fails with ENOSPC (SQLite answers the one with
SQLITE_IOERR_WRITE, the other with SQLITE_FULL; both roll back and leave the file intact).
Lifting the limit is the operator freeing space.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import time

import pytest
import structlog
import structlog.testing

from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress


async def until(predicate, timeout_s: float = 30.0, what: str = "condition"):
    """Poll an async ``predicate`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


async def get(b, path: str) -> tuple[int, str]:
    async with b.session.get(b.url + path) as resp:
        return resp.status, await resp.text()


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_writer_killed_during_a_claim_costs_one_logged_round_not_the_dispatcher(
        tmp_path, wp_stack, fake_crm, start_bridge):
    """SIGKILL the writer child while the dispatcher's claim waits on it: the claim fails, the loop
    logs it, backs off and goes on with a new writer; deliveries then run as usual."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    bridge = b.bridge
    pid = bridge.store.writer_pid
    with structlog.testing.capture_logs() as events:
        os.kill(pid, signal.SIGSTOP)
        try:
            # The dispatcher polls every 0.2 s: after a few polls its claim waits on the stopped writer.
            await asyncio.sleep(1.0)
        finally:
            os.kill(pid, signal.SIGKILL)
        await until(lambda: asyncio.sleep(0, bridge.health.failures.get("dispatch", 0) >= 1), what="a failed claim")
        await until(lambda: asyncio.sleep(0, any(e["event"] == "loop.recovered" for e in events)), what="recovery")
    failed = [e for e in events if e["event"] == "loop.failed"]
    assert failed and failed[0]["loop"] == "dispatch" and "WriterUnavailable" in failed[0]["error"]
    emails = [unique_email("afterkill") for _ in range(3)]
    for email in emails:
        fake_crm.add_customerly_user(email, attributes={"first_name": "Kill"})
    answers = [await b.send(customerly_delivery(email), wpf_action="add") for email in emails]
    assert all(status == 202 for status, _ in answers), answers
    jobs = [await b.wait_job(a["job_id"]) for _, a in answers]
    assert [j["status"] for j in jobs] == ["done"] * 3, jobs
    assert bridge.store.writer_pid not in (None, pid)
    _, text = await get(b, "/metrics")
    assert metric(text, "wpsb_queue_claim_failures_total") >= 1
    assert 'wpsb_loop_healthy{loop="dispatch"} 1.0' in text
    assert (await get(b, "/readyz"))[0] == 200


async def test_an_unwritable_database_turns_readiness_red_and_every_job_runs_once_it_is_repaired(
        tmp_path, wp_stack, fake_crm, start_bridge):
    """Writes refused while a job runs and another waits: its result cannot be written and the next
    claim fails; /readyz is 503 naming the loops, the metrics count the failures, deliveries get
    503. Writes allowed again: both jobs end done, the password the CRM holds logs in, ready again."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, worker={"concurrency": 1}))
    bridge = b.bridge
    slow, waiting = unique_email("fullslow"), unique_email("fullwait")
    for email in (slow, waiting):
        fake_crm.add_customerly_user(email, attributes={"first_name": "Full"})
    # The first fetch is asked to wait 2 s (429 + Retry-After, honoured within the run): the job is
    # running when the writes start failing.
    fake_crm.fail("/customerly/v1/users", status=429, times=1, method="GET", retry_after_s=2)
    _, a_slow = await b.send(customerly_delivery(slow), wpf_action="add")
    _, a_wait = await b.send(customerly_delivery(waiting), wpf_action="add")
    await until(lambda: _status_is(bridge, a_slow["job_id"], "running"), what="the first job running")
    pid = bridge.store.writer_pid
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
    try:
        status, body = await until(lambda: _red(b), what="/readyz turning red")
        assert status == 503 and '"ready": false' in body and '"dispatch": false' in body, body
        await until(lambda: _counted(b, "wpsb_queue_finish_failures_total"), what="a failed result write")
        await until(lambda: _counted(b, "wpsb_queue_claim_failures_total"), what="a failed claim")
        status, _ = await b.send(customerly_delivery(unique_email("fullrefused")), wpf_action="add")
        assert status == 503  # not acknowledged: the sender retries
        assert (await bridge.store.get_job(a_wait["job_id"]))["status"] == "queued"
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert bridge.store.writer_pid == pid  # the same writer carried on
    done = [await b.wait_job(a["job_id"], timeout_s=60) for a in (a_slow, a_wait)]
    assert [j["status"] for j in done] == ["done", "done"], done
    await until(lambda: _green(b), what="/readyz green again")
    wp = WordPressProbe(wp_stack)
    for email in (slow, waiting):
        [user] = await wp.users_with_email(email)
        password = fake_crm.customerly_user(email)["attributes"]["wp_password"]
        assert await wp.can_log_in(user["username"], password)


async def _status_is(bridge, job_id: int, status: str) -> bool:
    return (await bridge.store.get_job(job_id))["status"] == status


async def _red(b):
    status, body = await get(b, "/readyz")
    return (status, body) if status == 503 and '"dispatch": false' in body else None


async def _green(b):
    return (await get(b, "/readyz"))[0] == 200


async def _counted(b, name: str) -> bool:
    return metric((await get(b, "/metrics"))[1], name) >= 1
