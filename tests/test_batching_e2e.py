"""The worker's batching end to end (bridge → plugin batch upsert → real WordPress): upserts of jobs
of distinct contacts that wait together go as one batch request, while each contact's jobs still
run one at a time in arrival order and waiting updates still coalesce; one item that fails fails
only its own job; a plugin that does not advertise the batch gets single upserts; a batch that is
not full waits while another one is in flight, and only while deliveries keep coming; while they
do, it waits to fill (worker.batch_hold_s)."""

from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid

import pytest
from structlog.testing import capture_logs

from bridge.batching import PARTIAL_HOLD_MAX_S, UpsertBatcher
from bridge.clients.wordpress import UpsertRequest, make_wordpress
from bridge.settings import load_settings
from tests.conftest import bridge_config
from tests.fakes.tcp import Switch
from tests.plugin_actors import Site, link_fault_plugin
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress


def generic_config(tmp_path, wp_stack, fake_crm, **worker):
    """A connection that takes the contact from the delivery (ID at contact.id), one request slot."""
    return bridge_config(tmp_path, wp_stack, fake_crm, worker={"concurrency": 1, **worker}, connections={
        "shop": {"crm": "generic", "fetch_contact": False, "connector": {
            "contact_id_paths": ["contact.id"], "email_paths": ["contact.email"], "record_path": "contact",
            "fields": {"email": "user_email", "first_name": "first_name", "last_name": "last_name"},
            "meta_prefix": "shop"}}})


def client_settings(wp_stack, url: str | None = None, **wordpress):
    """Settings for a plugin client of the stack's WordPress (or of ``url`` in front of it), no retries."""
    wp = {"url": url or wp_stack["WPSB_WP_URL"], "username": wp_stack["WPSB_WP_USER"],
          "application_password": wp_stack["WPSB_WP_APP_PASSWORD"], **wordpress}
    return load_settings(None, wordpress=wp, worker={"http_attempts": 1})


def contact(tag: str, last_name: str = "One", email: str | None = None) -> dict:
    return {"contact": {"id": f"id-{tag}", "email": email or f"{tag}@example.com", "first_name": "Batch",
                        "last_name": last_name}, "n": uuid.uuid4().hex}


async def warm_up_then_hold(b, proxy: Switch, tag: str) -> None:
    """One delivery through to WordPress (the plugin's batch limit is known from then on), then
    the proxy holds WordPress's answers."""
    _, warm = await b.send(contact(f"{tag}-w"), path="/hooks/shop", wpf_action="add")
    await b.wait_job(warm["job_id"])
    proxy.hold()


async def proxied_requests_reach(proxy: Switch, n: int) -> None:
    """Wait (10 s at most) until ``n`` requests have gone through the proxy."""
    async with asyncio.timeout(10):
        while proxy.requests < n:
            await asyncio.sleep(0.005)


async def batch_counts(b) -> tuple[float, float]:
    """(batch requests, upserts in them) from /metrics."""
    async with b.session.get(b.url + "/metrics") as resp:
        text = await resp.text()

    def value(name: str) -> float:
        found = re.search(rf"^{name}_total (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("wpsb_wordpress_batches"), value("wpsb_wordpress_batch_items")


async def test_waiting_jobs_go_as_one_batch_keeping_order_and_coalescing(tmp_path, wp_stack, fake_crm, start_bridge):
    """A contact's add then three updates, and ten other contacts' adds, at once: batches are sent,
    every user is made once, the contact's updates run after its add, coalesced, newest name last."""
    b = await start_bridge(generic_config(tmp_path, wp_stack, fake_crm))
    tag = f"ord-{uuid.uuid4().hex[:8]}"
    first = [await b.send(contact(tag), path="/hooks/shop", wpf_action="add")]
    for n in (2, 3, 4):
        first.append(await b.send(contact(tag, f"Update{n}"), path="/hooks/shop", wpf_action="update"))
    others = [f"{tag}-o{i}" for i in range(10)]
    rest = await asyncio.gather(*(b.send(contact(o), path="/hooks/shop", wpf_action="add") for o in others))
    jobs = [await b.wait_job(answer["job_id"]) for _, answer in [*first, *rest]]
    assert all(j["status"] == "done" for j in jobs), [j["last_error"] for j in jobs]

    add, *updates = jobs[:4]
    assert add["outcome"]["outcome"] == "created"
    assert min(u["updated_at"] for u in updates) >= add["updated_at"]  # each contact in arrival order
    ran = [u for u in updates if u["merged_into"] is None]
    assert len(ran) < len(updates) and ran[0]["outcome"]["coalesced"]  # the waiting updates ran as one
    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(f"{tag}@example.com")
    assert user["last_name"] == "Update4"
    for other in others:
        assert wp.user_count(f"{other}@example.com") == 1
    batches, items = await batch_counts(b)
    assert batches >= 1 and items >= 2 * batches


async def test_one_failing_item_fails_only_its_own_job(tmp_path, wp_stack, fake_crm, start_bridge):
    """In a burst, a contact whose new email belongs to another user (409 wpsb_email_conflict) goes
    dead; the adds sent with it are all created."""
    b = await start_bridge(generic_config(tmp_path, wp_stack, fake_crm))
    tag = f"bad-{uuid.uuid4().hex[:8]}"
    for who in ("a", "b"):
        _, answer = await b.send(contact(f"{tag}-{who}"), path="/hooks/shop", wpf_action="add")
        assert (await b.wait_job(answer["job_id"]))["status"] == "done"
    taken = f"{tag}-b@example.com"
    burst = [b.send(contact(f"{tag}-a", email=taken), path="/hooks/shop", wpf_action="update")]
    burst += [b.send(contact(f"{tag}-ok{i}"), path="/hooks/shop", wpf_action="add") for i in range(8)]
    answers = await asyncio.gather(*burst)
    before_batches = await batch_counts(b)
    jobs = [await b.wait_job(answer["job_id"]) for _, answer in answers]
    conflict, *good = jobs
    assert conflict["status"] == "dead" and "wpsb_email_conflict" in conflict["last_error"]
    assert [j["outcome"]["outcome"] for j in good] == ["created"] * 8
    wp = WordPressProbe(wp_stack)
    assert all(wp.user_count(f"{tag}-ok{i}@example.com") == 1 for i in range(8))
    assert wp.user_count(taken) == 1
    batches, items = await batch_counts(b)
    assert items >= 2 and batches >= before_batches[0]


async def test_a_plugin_without_the_batch_feature_gets_single_upserts(tmp_path, wp_stack, fake_crm, start_bridge):
    """When status does not list upsert_batch (a site filtered it out), the same burst is done with
    single upserts: every user created, no batch request sent."""
    site = Site(wp_stack)
    link_fault_plugin(site)
    site.setup([{"op": "option", "name": "wpsb_test_hide_features", "value": True}])
    try:
        b = await start_bridge(generic_config(tmp_path, wp_stack, fake_crm))
        tag = f"nob-{uuid.uuid4().hex[:8]}"
        answers = await asyncio.gather(*(b.send(contact(f"{tag}-{i}"), path="/hooks/shop", wpf_action="add")
                                         for i in range(6)))
        jobs = [await b.wait_job(answer["job_id"]) for _, answer in answers]
        assert [j["outcome"]["outcome"] for j in jobs] == ["created"] * 6
        assert await batch_counts(b) == (0.0, 0.0)
    finally:
        site.setup([{"op": "option", "name": "wpsb_test_hide_features", "value": None}])


async def test_a_batch_that_is_not_full_waits_while_another_one_is_in_flight(wp_stack):
    """Nagle's rule with 4 request slots: while a lone upsert's request is in flight (its answer held
    by a proxy), upserts arriving wait instead of taking the free slots; once they fill a batch,
    that batch goes at once; the rest go together after PARTIAL_HOLD_MAX_S without an answer."""
    proxy = Switch(wp_stack["WPSB_WP_URL"])
    await proxy.start()
    wp = make_wordpress(client_settings(wp_stack, proxy.url))
    sizes: list[int] = []
    batcher = UpsertBatcher(lambda: wp, 5, 0.0, 4, on_batch=sizes.append)
    tag = f"nag-{uuid.uuid4().hex[:8]}"
    emails = [f"{tag}-{i}@example.com" for i in range(10)]

    def upsert(email: str) -> asyncio.Task:
        return asyncio.ensure_future(batcher.upsert(UpsertRequest(email=email, first_name="Nagle")))
    requests_reach = functools.partial(proxied_requests_reach, proxy)
    try:
        assert (await batcher.upsert(UpsertRequest(email=emails[0]))).outcome == "created"  # learns the limit
        proxy.hold()
        sent = proxy.requests
        first = upsert(emails[1])
        await requests_reach(sent + 1)
        waiting = [upsert(e) for e in emails[2:5]]
        await asyncio.sleep(0.3)
        assert proxy.requests == sent + 1 and sizes == []  # three upserts, four slots, none sent
        waiting += [upsert(e) for e in emails[5:]]  # 8 waiting: a full batch of 5 goes
        await requests_reach(sent + 2)
        assert sizes == [5]
        held_at = time.monotonic()  # the 3 left wait for an answer, but not for ever
        await requests_reach(sent + 3)
        assert time.monotonic() - held_at >= PARTIAL_HOLD_MAX_S * 0.9 and sizes == [5, 3]
        proxy.release()
        results = await asyncio.gather(first, *waiting)
        assert [r.outcome for r in results] == ["created"] * 9 and proxy.requests == sent + 3
        probe = WordPressProbe(wp_stack)
        assert all(probe.user_count(e) == 1 for e in emails)
    finally:
        proxy.release()
        await batcher.close()
        await wp.close()
        await proxy.stop()


async def test_while_the_intake_is_busy_a_batch_that_is_not_full_waits_to_fill(wp_stack):
    """worker.batch_hold_s: while the intake keeps answering deliveries, upserts with nothing in
    flight wait for a full batch (at most busy_hold_s) instead of going a few at a time; a lone
    upsert still goes at once, and once the intake goes quiet what waits goes at once."""
    wp = make_wordpress(client_settings(wp_stack))
    sizes: list[int] = []
    busy = [True]
    hold_s = 0.8
    batcher = UpsertBatcher(lambda: wp, 5, 0.0, 4, on_batch=sizes.append, intake_busy=lambda: busy[0],
                            busy_hold_s=hold_s)
    tag = f"hold-{uuid.uuid4().hex[:8]}"
    emails = [f"{tag}-{i}@example.com" for i in range(12)]

    def upsert(email: str) -> asyncio.Task:
        return asyncio.ensure_future(batcher.upsert(UpsertRequest(email=email, first_name="Hold")))
    try:
        assert (await batcher.upsert(UpsertRequest(email=emails[0]))).outcome == "created"  # learns the limit
        started = time.monotonic()
        assert (await upsert(emails[1])).outcome == "created"  # alone, nothing in flight: at once
        assert time.monotonic() - started < hold_s / 2 and sizes == []
        waiting = [upsert(e) for e in emails[2:5]]
        await asyncio.sleep(0.3)
        assert sizes == [] and not any(t.done() for t in waiting)  # three of five: they wait
        waiting += [upsert(e) for e in emails[5:7]]  # five: the batch is full and goes
        assert [r.outcome for r in await asyncio.gather(*waiting)] == ["created"] * 5 and sizes == [5]
        held_at = time.monotonic()
        assert [r.outcome for r in await asyncio.gather(*(upsert(e) for e in emails[7:9]))] == ["created"] * 2
        assert time.monotonic() - held_at >= hold_s * 0.9 and sizes == [5, 2]  # not for ever
        waiting = [upsert(e) for e in emails[9:12]]
        await asyncio.sleep(0.2)
        assert sizes == [5, 2]
        quiet_at = time.monotonic()
        busy[0] = False  # the intake went quiet (Traffic's idle callback wakes the batcher)
        batcher.wake()
        assert [r.outcome for r in await asyncio.gather(*waiting)] == ["created"] * 3
        assert time.monotonic() - quiet_at < hold_s / 2 and sizes == [5, 2, 3]
        probe = WordPressProbe(wp_stack)
        assert all(probe.user_count(e) == 1 for e in emails)
    finally:
        await batcher.close()
        await wp.close()


async def test_when_the_deliveries_stop_a_batch_that_is_not_full_goes_at_once(tmp_path, wp_stack, fake_crm,
                                                                                start_bridge):
    """The hold of Nagle's rule lasts only while deliveries keep coming: with a lone upsert's request
    in flight (its answer held by a proxy), three deliveries arrive and the intake goes quiet; their
    upserts go together beside the held request, without waiting for its answer (before: for the
    answer, or for PARTIAL_HOLD_MAX_S). Every job is then done, each user made once. (The three
    are sent at once and claimed together: claims wait worker.claim_interval_s while a request is
    in flight, 0.2 s here, so that a slow machine does not split them over two claims.)"""
    proxy = Switch(wp_stack["WPSB_WP_URL"])
    await proxy.start()
    config = generic_config(tmp_path, wp_stack, fake_crm, concurrency=4, claim_interval_s=0.2)
    config["wordpress"] = {**config["wordpress"], "url": proxy.url}
    b = await start_bridge(config)
    sizes: list[int] = []
    b.bridge.worker.batcher._on_batch = sizes.append
    tag = f"quiet-{uuid.uuid4().hex[:8]}"
    requests_reach = functools.partial(proxied_requests_reach, proxy)
    try:
        await warm_up_then_hold(b, proxy, tag)
        sent = proxy.requests
        _, lone = await b.send(contact(f"{tag}-a"), path="/hooks/shop", wpf_action="add")
        await requests_reach(sent + 1)
        burst = [a for _, a in await asyncio.gather(*(
            b.send(contact(f"{tag}-b{i}"), path="/hooks/shop", wpf_action="add") for i in range(3)))]
        quiet_at = time.monotonic()
        await requests_reach(sent + 2)
        assert time.monotonic() - quiet_at < PARTIAL_HOLD_MAX_S / 2
        assert (await b.bridge.store.get_job(lone["job_id"]))["status"] != "done"  # its answer still held
        assert sum(sizes) == 3, sizes
        proxy.release()
        jobs = [await b.wait_job(a["job_id"]) for a in (lone, *burst)]
        assert [j["outcome"]["outcome"] for j in jobs] == ["created"] * 4, [j["last_error"] for j in jobs]
        probe = WordPressProbe(wp_stack)
        assert [probe.user_count(f"{tag}-{s}@example.com") for s in ("a", "b0", "b1", "b2")] == [1] * 4
    finally:
        proxy.release()
        await proxy.stop()


async def test_claims_wait_while_a_request_is_in_flight(tmp_path, wp_stack, fake_crm, start_bridge):
    """worker.claim_interval_s: with no WordPress request in flight a delivery is claimed at once;
    while one is (its answer held by a proxy), deliveries arriving are not claimed one commit each
    but together once the interval has passed; every job is then done, each user made once."""
    proxy = Switch(wp_stack["WPSB_WP_URL"])
    await proxy.start()
    config = generic_config(tmp_path, wp_stack, fake_crm, concurrency=4, claim_interval_s=0.6)
    config["wordpress"] = {**config["wordpress"], "url": proxy.url}
    b = await start_bridge(config)
    claims: list[tuple[float, int]] = []
    real_claim = b.bridge.store.claim

    async def counted(limit: int, *args, **kwargs):
        jobs = await real_claim(limit, *args, **kwargs)
        claims.append((time.monotonic(), len(jobs)))
        return jobs

    b.bridge.store.claim = counted
    tag = f"cl-{uuid.uuid4().hex[:8]}"
    requests_reach = functools.partial(proxied_requests_reach, proxy)
    try:
        await warm_up_then_hold(b, proxy, tag)
        sent, started = proxy.requests, time.monotonic()
        _, lone = await b.send(contact(f"{tag}-a"), path="/hooks/shop", wpf_action="add")
        await requests_reach(sent + 1)
        assert time.monotonic() - started < 0.5  # nothing was in flight: claimed and sent at once
        before = len([c for c in claims if c[1]])
        burst = []
        for i in range(6):  # while that request is held: six deliveries, 40 ms apart
            burst.append((await b.send(contact(f"{tag}-b{i}"), path="/hooks/shop", wpf_action="add"))[1])
            await asyncio.sleep(0.04)
        claimed_during = len([c for c in claims if c[1]]) - before
        assert claimed_during <= 1, claims  # one claim per delivery without the interval
        proxy.release()
        jobs = [await b.wait_job(a["job_id"]) for a in (lone, *burst)]
        assert [j["outcome"]["outcome"] for j in jobs] == ["created"] * 7, [j["last_error"] for j in jobs]
        probe = WordPressProbe(wp_stack)
        made = [probe.user_count(f"{tag}-{s}@example.com") for s in ["a", *(f"b{i}" for i in range(6))]]
        assert made == [1] * 7
    finally:
        proxy.release()
        await proxy.stop()


async def test_a_batch_carries_at_most_ten_upserts_with_a_password(wp_stack):
    """Each password is a hash or a check inside WordPress (bcrypt from 6.8 on): 14 upserts with one
    and 2 without, waiting together, go as 10 + 2 in the first request and the other 4 in the next;
    every user is created once, with the password it was sent."""
    wp = make_wordpress(client_settings(wp_stack))
    sizes: list[int] = []
    batcher = UpsertBatcher(lambda: wp, 25, 0.0, 4, on_batch=sizes.append)
    tag = f"pw-{uuid.uuid4().hex[:8]}"
    try:
        assert (await batcher.upsert(UpsertRequest(email=f"{tag}-first@example.com"))).outcome == "created"
        with_password = [UpsertRequest(email=f"{tag}-{i}@example.com", password=f"Pw-{tag}-{i}",
                                       set_password=True) for i in range(14)]
        plain = [UpsertRequest(email=f"{tag}-plain-{i}@example.com") for i in range(2)]
        results = await asyncio.gather(*(batcher.upsert(r) for r in (*with_password, *plain)))
        assert sizes == [12, 4]
        assert [r.outcome for r in results] == ["created"] * 16
        probe = WordPressProbe(wp_stack)
        assert all(probe.user_count(r.email) == 1 for r in (*with_password, *plain))
        assert await probe.can_log_in(results[13].login, with_password[13].password)
    finally:
        await batcher.close()
        await wp.close()


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_a_batch_the_plugin_ran_item_by_item_is_logged(wp_stack, transport):
    """A database error inside the batch's transaction (the fault plugin's failing query): every item
    is still created, and the client says the batch ran one by one (``wordpress.batch_per_item``);
    a batch that ran in its transaction says nothing."""
    link_fault_plugin(Site(wp_stack))
    wp = make_wordpress(client_settings(wp_stack, transport=transport))
    tag = f"pi-{uuid.uuid4().hex[:8]}"
    try:
        with capture_logs() as events:
            faulty = await wp.upsert_batch([UpsertRequest(email=f"{tag}-a@example.com"),
                                            UpsertRequest(email=f"{tag}-b@example.com",
                                                          meta={"fault_probe": "db-error"})])
            quiet = len([e for e in events if e["event"] == "wordpress.batch_per_item"])
            plain = await wp.upsert_batch([UpsertRequest(email=f"{tag}-c@example.com"),
                                           UpsertRequest(email=f"{tag}-d@example.com")])
    finally:
        await wp.close()
    assert [r.outcome for r in (*faulty, *plain)] == ["created"] * 4
    logged = [e for e in events if e["event"] == "wordpress.batch_per_item"]
    assert quiet == 1 and len(logged) == 1 and logged[0]["items"] == 2
