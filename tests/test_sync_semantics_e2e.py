"""What add, update and update_tags do to WordPress, through the bridge (WP Fusion's semantics):
no_user, create_on_update, tags-only writes, role changes only when asked, role fallbacks recorded."""

from __future__ import annotations

import re

import pytest

from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress


async def test_unknown_contact_on_update_ends_as_no_user(tmp_path, wp_stack, fake_crm, start_bridge):
    """update for a contact with no WordPress user ends with outcome no_user and creates nothing."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    email = unique_email("nouser")
    fake_crm.add_customerly_user(email, tags=["x"])
    _, answer = await b.send(customerly_delivery(email), wpf_action="update")
    job = await b.wait_job(answer["job_id"])
    assert job["status"] == "done" and job["outcome"]["outcome"] == "no_user"
    assert WordPressProbe(wp_stack).user_count(email) == 0


async def test_update_tags_writes_only_tags(tmp_path, wp_stack, fake_crm, start_bridge):
    """update_tags changes the tags and nothing else, even when other CRM fields changed."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    email = unique_email("tagsonly")
    fake_crm.add_customerly_user(email, attributes={"first_name": "Old"}, tags=["a"])
    _, a1 = await b.send(customerly_delivery(email), wpf_action="add")
    await b.wait_job(a1["job_id"])
    fake_crm.add_customerly_user(email, attributes={"first_name": "New"}, tags=["a", "b"])
    _, a2 = await b.send(customerly_delivery(email) | {"n": 2}, wpf_action="update_tags")
    job = await b.wait_job(a2["job_id"])
    assert job["outcome"]["changed"] == ["tags"]
    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(email)
    assert user["first_name"] == "Old" and wp.meta(user["id"], "customerly_tags") == ["a", "b"]


async def test_create_on_update_creates_the_missing_user(tmp_path, wp_stack, fake_crm, start_bridge):
    """With create_on_update, an update for an unknown contact creates the user (and returns the password)."""
    config = bridge_config(tmp_path, wp_stack, fake_crm)
    config["connections"]["customerly"]["create_on_update"] = True
    b = await start_bridge(config)
    email = unique_email("cou")
    fake_crm.add_customerly_user(email, attributes={"first_name": "Cou"})
    _, answer = await b.send(customerly_delivery(email), wpf_action="update")
    job = await b.wait_job(answer["job_id"])
    assert job["outcome"]["outcome"] == "created" and job["outcome"]["written_back"] == ["wp_password"]
    assert WordPressProbe(wp_stack).user_count(email) == 1


async def test_update_changes_the_role_only_when_given_and_records_fallbacks(tmp_path, wp_stack, fake_crm, start_bridge):
    """update without role keeps it; role=customer sets it; an unknown role falls back with a warning in the outcome."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    email = unique_email("roles")
    fake_crm.add_customerly_user(email)
    _, a1 = await b.send(customerly_delivery(email), wpf_action="add", role="customer")
    await b.wait_job(a1["job_id"])
    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(email)
    _, a2 = await b.send(customerly_delivery(email) | {"n": 2}, wpf_action="update")
    await b.wait_job(a2["job_id"])
    assert (await wp.user(user["id"]))["roles"] == ["customer"]
    _, a3 = await b.send(customerly_delivery(email) | {"n": 3}, wpf_action="update", role="Wizard")
    job = await b.wait_job(a3["job_id"])
    assert any("Wizard" in w for w in job["outcome"]["warnings"])
    assert (await wp.user(user["id"]))["roles"] == ["subscriber"]


async def test_a_contact_the_crm_does_not_know_ends_as_not_in_crm(tmp_path, wp_stack, fake_crm, start_bridge):
    """User.com sends only an ID the CRM answers 404 for: the job ends not_in_crm, nothing is created, nothing retried."""
    from tests.test_connectors_e2e import connections

    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, connections=connections(fake_crm)))
    _, answer = await b.send({"user": {"id": 987654321}}, path="/hooks/usercom")
    job = await b.wait_job(answer["job_id"])
    assert job["status"] == "done" and job["attempts"] == 1 and job["outcome"]["outcome"] == "not_in_crm"


@pytest.mark.parametrize("fmt", ["fnamenum", "flname"])
async def test_new_users_get_the_login_format_configured(tmp_path, wp_stack, fake_crm, start_bridge, fmt):
    """wordpress.username_format: fnamenum makes the login from the first name and three digits,
    flname from first and last name (WordPress appends a number when that login is taken)."""
    config = bridge_config(tmp_path, wp_stack, fake_crm)
    config["wordpress"]["username_format"] = fmt
    b = await start_bridge(config)
    email = unique_email("login")
    fake_crm.add_customerly_user(email, attributes={"first_name": "Zoë", "last_name": "Quill"})
    _, answer = await b.send(customerly_delivery(email), wpf_action="add")
    job = await b.wait_job(answer["job_id"])
    assert job["outcome"]["outcome"] == "created", job["last_error"]
    [user] = await WordPressProbe(wp_stack).users_with_email(email)
    pattern = r"zoe[1-9]\d\d" if fmt == "fnamenum" else r"zoequill(-?\d+)?"
    assert re.fullmatch(pattern, user["username"]), user
