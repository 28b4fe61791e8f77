"""One Customerly webhook to one real WordPress user, end to end (issue 2's thin path).

Real WordPress (scripts/wordpress-stack), real SQLite, real aiohttp server; only Customerly is faked.
"""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import ACCESS_KEY, bridge_config, customerly_delivery, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress


@pytest.fixture(params=["rest", "xmlrpc"])
async def bridge(request, tmp_path, wp_stack, fake_crm, start_bridge):
    """A bridge on each WordPress transport: the same behaviour is expected from both."""
    return await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, transport=request.param))


async def test_add_creates_the_user_with_role_mail_tags_and_returns_the_password(bridge, wp_stack, fake_crm, mail_log):
    """add: a new WordPress user with the role, tags in meta, one welcome mail; the password goes back to Customerly and logs in."""
    email = unique_email("ada")
    fake_crm.add_customerly_user(email, name="Ada Lovelace", attributes={"first_name": "Ada", "last_name": "Lovelace"},
                                 tags=["vip", "newsletter"])
    status, answer = await bridge.send(customerly_delivery(email), wpf_action="add", role="customer", send_notification="true")
    assert status == 202 and answer["success"] is True
    job = await bridge.wait_job(answer["job_id"])
    assert job["status"] == "done", job
    assert job["outcome"]["outcome"] == "created"

    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(email)
    full = await wp.user(user["id"])
    assert full["roles"] == ["customer"]
    assert (full["first_name"], full["last_name"]) == ("Ada", "Lovelace")
    assert wp.meta(user["id"], "customerly_tags") == ["newsletter", "vip"]
    assert wp.meta(user["id"], "customerly_contact_id") == email
    assert len(mail_log.to(email)) == 1

    fetches = [r for r in fake_crm.requests_to("customerly") if r.method == "GET" and r.query.get("email") == email]
    assert fetches and all(r.path == "/customerly/v1/users" for r in fetches)
    assert all(r.headers.get("authorization") == "Bearer cly-test-token" for r in fetches)
    writes = [r for r in fake_crm.requests_to("customerly") if r.method == "POST" and r.json["users"][0]["email"] == email]
    assert len(writes) == 1
    password = writes[0].json["users"][0]["attributes"]["wp_password"]
    assert len(password) == 16
    assert await wp.can_log_in(full["username"], password)
    assert job["has_secret"] is False


async def test_the_same_contact_again_updates_the_same_user(bridge, wp_stack, fake_crm, mail_log):
    """A second add for the same contact updates the one account: no duplicate, no second mail, no second password."""
    email = unique_email("grace")
    fake_crm.add_customerly_user(email, attributes={"first_name": "Grace", "last_name": "Hopper"}, tags=["a"])
    status, first = await bridge.send(customerly_delivery(email), wpf_action="add", send_notification="true")
    assert (await bridge.wait_job(first["job_id"]))["outcome"]["outcome"] == "created"

    fake_crm.add_customerly_user(email, attributes={"first_name": "Grace", "last_name": "Brewster Hopper"}, tags=["a", "b"])
    body = customerly_delivery(email) | {"type": "user.tagged"}
    status, second = await bridge.send(body, wpf_action="add", send_notification="true")
    assert status == 202 and second["job_id"] != first["job_id"]
    job = await bridge.wait_job(second["job_id"])
    assert job["outcome"]["outcome"] == "updated", job
    assert set(job["outcome"]["changed"]) >= {"last_name", "tags"}

    wp = WordPressProbe(wp_stack)
    assert wp.user_count(email) == 1
    [user] = await wp.users_with_email(email)
    assert (await wp.user(user["id"]))["last_name"] == "Brewster Hopper"
    assert wp.meta(user["id"], "customerly_tags") == ["a", "b"]
    assert len(mail_log.to(email)) == 1
    writes = [r for r in fake_crm.requests_to("customerly") if r.method == "POST" and r.json["users"][0]["email"] == email]
    assert len(writes) == 1


async def test_a_repeat_with_the_senders_event_id_is_one_job_even_after_it_ran(bridge, fake_crm):
    """The same webhook-id within the window is answered with the first job, also once that job is done."""
    email = unique_email("dup")
    fake_crm.add_customerly_user(email, attributes={"first_name": "Dup"})
    headers = {"Content-Type": "application/json", "webhook-id": f"msg_{uuid.uuid4().hex}"}
    url, params = bridge.url + "/", {"wpf_action": "add", "access_key": ACCESS_KEY}
    async with bridge.session.post(url, params=params, json=customerly_delivery(email), headers=headers) as resp:
        assert resp.status == 202
        first = (await resp.json())["job_id"]
    assert (await bridge.wait_job(first))["status"] == "done"
    async with bridge.session.post(url, params=params, json=customerly_delivery(email), headers=headers) as resp:
        assert (resp.status, await resp.json()) == (200, {"success": True, "job_id": first, "duplicate": True})


async def test_the_same_bytes_after_the_job_ran_are_new_work(bridge, wp_stack, fake_crm):
    """WP Fusion-style senders repeat URL and body for every change: once the first job ran, the
    repeat runs too (on the same account, with no second password)."""
    email = unique_email("again")
    fake_crm.add_customerly_user(email, attributes={"first_name": "Again"})
    s1, a1 = await bridge.send(customerly_delivery(email), wpf_action="add")
    assert s1 == 202 and (await bridge.wait_job(a1["job_id"]))["outcome"]["outcome"] == "created"
    s2, a2 = await bridge.send(customerly_delivery(email), wpf_action="add")
    assert s2 == 202 and a2["job_id"] != a1["job_id"]
    job = await bridge.wait_job(a2["job_id"])
    assert job["status"] == "done" and job["outcome"]["outcome"] in ("updated", "unchanged")
    assert "written_back" not in job["outcome"]
    assert WordPressProbe(wp_stack).user_count(email) == 1


async def test_a_new_bridge_database_never_claims_an_existing_user_as_created(tmp_path, wp_stack, fake_crm, start_bridge):
    """Job IDs restart with a new database; the idempotency key sent to WordPress does not, so no second password is written."""
    email = unique_email("fresh")
    fake_crm.add_customerly_user(email, attributes={"first_name": "Fresh"})
    first = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, database={"path": str(tmp_path / "a.db")}))
    _, a1 = await first.send(customerly_delivery(email), wpf_action="add")
    assert (await first.wait_job(a1["job_id"]))["outcome"]["outcome"] == "created"
    second = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, database={"path": str(tmp_path / "b.db")}))
    _, a2 = await second.send(customerly_delivery(email), wpf_action="add")
    assert a2["job_id"] == a1["job_id"]  # both databases start counting at the same place
    job = await second.wait_job(a2["job_id"])
    assert job["outcome"]["outcome"] in ("updated", "unchanged") and "written_back" not in job["outcome"]
    writes = [r for r in fake_crm.requests_to("customerly") if r.method == "POST" and r.json["users"][0]["email"] == email]
    assert len(writes) == 1
