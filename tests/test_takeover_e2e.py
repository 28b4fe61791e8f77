"""A holder of the access key tries to take over the administrator, end to end against the real
WordPress, on the most permissive connection an operator could configure (no CRM fetch, every
query override, editor allowed), and on a fetching one where the administrator is also a CRM
contact. Nothing of the administrator changes: email, contact-ID link, role, password, meta."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress

OPEN_CONNECTION = {
    "crm": "generic", "fetch_contact": False, "query_overrides": ["email", "contact_id", "role"],
    "connector": {
        "contact_id_paths": ["contact.id"], "email_paths": ["contact.email"], "record_path": "contact",
        "fields": {"email": "user_email", "first": "first_name", "pass": "user_pass", "plan": "meta.plan"},
        "tags_path": "tags", "meta_prefix": "open",
    },
}


@pytest.fixture
async def admin(wp_stack):
    """A fresh administrator with a known password and a meta value to watch."""
    wp = WordPressProbe(wp_stack)
    email, login, password = unique_email("admin"), f"admin-{uuid.uuid4().hex[:8]}", "Admin-pw-" + uuid.uuid4().hex
    user_id = await wp.create_admin(email, login, password)
    return {"id": user_id, "email": email, "login": login, "password": password}


async def assert_untouched(wp: WordPressProbe, admin: dict) -> None:
    user = await wp.user(admin["id"])
    assert user["email"] == admin["email"] and user["roles"] == ["administrator"], user
    assert user["first_name"] == "" and user["username"] == admin["login"]
    assert await wp.can_log_in(admin["login"], admin["password"])
    for key in ("open_contact_id", "customerly_contact_id", "open_tags", "plan"):
        assert wp.meta(admin["id"], key) is None, key


async def test_a_key_holder_cannot_take_over_the_administrator(tmp_path, wp_stack, fake_crm, start_bridge, admin):
    """Link a contact ID to the admin's email, then change the email through it; add with the admin's
    email, role=administrator and a chosen password: every job ends without touching the admin."""
    config = bridge_config(tmp_path, wp_stack, fake_crm, connections={"open": OPEN_CONNECTION})
    config["wordpress"]["allowed_roles"] = ["subscriber", "editor"]
    b = await start_bridge(config)
    wp = WordPressProbe(wp_stack)
    attacker = unique_email("attacker")
    contact = f"evil-{uuid.uuid4().hex[:6]}"
    attempts = [
        ("update", {"contact_id": contact, "email": admin["email"]}, {"contact": {"first": "Pwned", "plan": "x"}}),
        ("update", {"contact_id": contact, "email": attacker}, {"contact": {"first": "Pwned"}}),
        ("add", {"email": admin["email"], "role": "editor"}, {"contact": {"pass": "attacker-pw-123", "plan": "y"}}),
        ("add", {"email": admin["email"].upper(), "role": "administrator"}, {"contact": {"first": "Pwned"}}),
        ("update", {"contact_id": contact}, {"contact": {"email": attacker, "pass": "attacker-pw-123"}}),
    ]
    outcomes = []
    for action, query, body in attempts:
        status, answer = await b.send(body, path="/hooks/open", wpf_action=action, **query)
        assert status == 202, answer
        job = await b.wait_job(answer["job_id"])
        outcomes.append(job["outcome"] and job["outcome"].get("outcome"))
        await assert_untouched(wp, admin)
    assert outcomes[0] == "skipped_privileged" and outcomes[2] == "skipped_privileged", outcomes
    # No account was made or linked that could reset the admin's password through the attacker's mailbox.
    assert wp.user_count(attacker) <= 1
    for user in await wp.users_with_email(attacker):
        assert user["id"] != admin["id"] and "administrator" not in (await wp.user(user["id"]))["roles"]


async def test_an_administrator_who_is_also_a_crm_contact_is_never_synced(
        tmp_path, wp_stack, fake_crm, start_bridge, admin):
    """Customerly knows the admin's email (the admin is a contact too): the CRM record is fetched,
    and the plugin still refuses to change a privileged user (skipped_privileged)."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    fake_crm.add_customerly_user(admin["email"], name="Changed Name", attributes={"first_name": "Pwned",
                                                                                  "user_pass": "crm-chosen-pw-1"},
                                 tags=["vip"])
    for action in ("add", "update", "update_tags"):
        _, answer = await b.send(customerly_delivery(admin["email"]), wpf_action=action, role="customer")
        job = await b.wait_job(answer["job_id"])
        assert job["status"] == "done" and job["outcome"]["outcome"] == "skipped_privileged", job
        assert job["outcome"]["warnings"], job
    await assert_untouched(WordPressProbe(wp_stack), admin)
    assert WordPressProbe(wp_stack).meta(admin["id"], "customerly_tags") is None
