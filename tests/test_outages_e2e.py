"""Outages and rate limits against the real WordPress and the fake CRM: WordPress unreachable
pauses dispatch (waiting jobs keep their attempts, WordPress gets a bounded trickle of probes,
everything runs once it is back); a CRM's Retry-After holds back every call to that CRM; the
retry budget is an age, not a count."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.clients.gate import RateGate
from bridge.errors import RateLimited
from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.fakes.tcp import Switch
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress


@pytest.fixture
async def switch(wp_stack):
    s = Switch(wp_stack["WPSB_WP_URL"])
    await s.start()
    yield s
    await s.stop()


async def test_wordpress_down_pauses_dispatch_and_no_waiting_job_spends_an_attempt(
        tmp_path, wp_stack, fake_crm, start_bridge, switch):
    """WordPress cut off: the job that found it down is retried, the others wait unclaimed
    (attempts 0), WordPress sees only a few probes, /readyz is red; back: every job is done.
    (One request in flight of one upsert: with batching, the jobs of the one request that found
    the outage are those that spend an attempt.)"""
    cfg = bridge_config(tmp_path, wp_stack, fake_crm, worker={"concurrency": 1, "batch_size": 1})
    cfg["wordpress"]["url"] = switch.url
    b = await start_bridge(cfg)
    emails = [unique_email("outage") for _ in range(5)]
    for email in emails:
        fake_crm.add_customerly_user(email, attributes={"first_name": "Out"})
    _, warm = await b.send(customerly_delivery(emails[0]), wpf_action="add")
    assert (await b.wait_job(warm["job_id"]))["status"] == "done"

    switch.down()
    answers = [await b.send(customerly_delivery(email), wpf_action="add") for email in emails[1:]]
    ids = [a["job_id"] for _, a in answers]
    deadline = time.monotonic() + 20
    while not b.bridge.worker.paused and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert b.bridge.worker.paused
    tried_at_pause = switch.tried_while_down
    await asyncio.sleep(4)  # probes at 1 s, 2 s, 4 s ... meanwhile
    jobs = [await b.bridge.store.get_job(i) for i in ids]
    assert [j["status"] for j in jobs] == ["queued"] * 4, jobs
    assert sorted(j["attempts"] for j in jobs)[:3] == [0, 0, 0]  # only the job that found the outage ran
    probes = switch.tried_while_down - tried_at_pause
    assert 1 <= probes <= 12, probes  # a handful of probes (each up to http_attempts tries), not jobs
    async with b.session.get(b.url + "/readyz") as resp:
        assert resp.status == 503 and '"wordpress_probe": false' in await resp.text()

    switch.back()
    done = [await b.wait_job(i, timeout_s=60) for i in ids]
    assert [j["status"] for j in done] == ["done"] * 4, done
    wp = WordPressProbe(wp_stack)
    assert [wp.user_count(e) for e in emails] == [1] * 5
    # The job that found WordPress down had fetched its contact: its next run reused that record.
    fetches = [sum(1 for r in fake_crm.requests_to("customerly") if r.method == "GET" and r.query.get("email") == e)
               for e in emails[1:]]
    assert fetches == [1] * 4, fetches


async def test_a_retry_after_from_the_crm_holds_back_every_call_to_it(tmp_path, wp_stack, fake_crm, start_bridge):
    """One job's 429 with Retry-After: 2 shuts the CRM for every job: no request reaches it in the
    window (except those already in flight), and every job ends done."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    emails = [unique_email("gate") for _ in range(6)]
    for email in emails:
        fake_crm.add_customerly_user(email, attributes={"first_name": "Gate"})
    fake_crm.clear()
    fake_crm.fail("/customerly/v1/users", status=429, times=1, method="GET", retry_after_s=2)
    answers = await asyncio.gather(*(b.send(customerly_delivery(e), wpf_action="add") for e in emails))
    done = [await b.wait_job(a["job_id"], timeout_s=60) for _, a in answers]
    assert [j["status"] for j in done] == ["done"] * 6, done
    calls = fake_crm.requests_to("customerly")
    [limited] = [r for r in calls if r.status == 429]
    in_flight_s = 0.5  # requests sent before the 429 answer reached the bridge
    inside = [r for r in calls if limited.at + in_flight_s < r.at < limited.at + 2.0]
    assert inside == [], [(r.method, round(r.at - limited.at, 3)) for r in inside]
    assert any(r.at >= limited.at + 2.0 for r in calls)


async def test_the_gate_sends_a_long_wait_back_to_the_queue():
    """A pause longer than a run may wait raises RateLimited with the time left (the job is
    retried then); a short one is waited out, after which the gate is open."""
    gate = RateGate("crm:x")
    gate.shut(RateLimited("crm:x", "HTTP 429", 0.3))
    with pytest.raises(RateLimited) as info:
        await gate.enter(max_wait_s=0.01)
    assert 0 < info.value.retry_after_s <= 0.3
    await gate.enter(max_wait_s=10)
    assert gate.remaining_s() == 0


async def test_the_retry_budget_is_an_age_not_a_count(tmp_path, wp_stack, fake_crm, start_bridge):
    """Without max_attempts a failing job is retried past 10 runs, and dies once older than
    retry_budget_s, with the reason."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, worker={
        "http_attempts": 1, "retry_base_s": 0.01, "retry_max_s": 0.05, "retry_budget_s": 2.5}))
    email = unique_email("budget")
    fake_crm.add_customerly_user(email)
    fake_crm.fail("/customerly/v1/users", status=502, times=10_000, method="GET")
    try:
        _, answer = await b.send(customerly_delivery(email), wpf_action="add")
        job = await b.wait_job(answer["job_id"], timeout_s=30)
    finally:
        fake_crm.clear()
    assert job["status"] == "dead" and job["attempts"] > 10, job
    assert "h of retries" in job["last_error"] and "HTTP 502" in job["last_error"]
