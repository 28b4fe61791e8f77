"""The bridge with the plugin's least-privilege user, end to end on the real WordPress, and the
"email changed" notice: a Bridge whose WordPress login has only the wpsb_bridge role adds and
updates users; a holder of the access key who tries to take over the administrator finds
nothing changed; an email change notifies the old address unless the operator turns it off."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from bridge.clients.wordpress import UpsertRequest
from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.plugin_actors import CONTACT_KEY, client_for, make_site

pytestmark = pytest.mark.wordpress


@pytest.fixture(scope="module")
def site(wp_stack):
    return make_site(wp_stack)


@pytest.fixture(scope="module")
def bridge_user(site):
    return site.new_user("bridge", "wpsb_bridge", app_password=True)


def least_privilege(tmp_path, wp_stack, fake_crm, bridge_user, transport, **extra):
    """A bridge configuration whose WordPress login is the wpsb_bridge user."""
    return bridge_config(tmp_path, wp_stack, fake_crm, transport=transport,
                         wordpress={"username": bridge_user.login, "application_password": bridge_user.app_password,
                                    **extra.pop("wordpress", {})}, **extra)


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_the_bridge_works_with_the_least_privilege_user(site, bridge_user, transport, tmp_path, wp_stack,
                                                              fake_crm, start_bridge):
    """add creates the customer (role, names, tags, password written back); a later add updates it."""
    bridge = await start_bridge(least_privilege(tmp_path, wp_stack, fake_crm, bridge_user, transport))
    email = unique_email("lp")
    fake_crm.add_customerly_user(email, attributes={"first_name": "Lea", "last_name": "Pri"}, tags=["a"])
    status, answer = await bridge.send(customerly_delivery(email), wpf_action="add", role="customer")
    assert status == 202
    job = await bridge.wait_job(answer["job_id"])
    assert job["status"] == "done" and job["outcome"]["outcome"] == "created", job
    [user_id] = site.users_with_email(email)
    assert site.roles_of(user_id) == ["customer"]
    assert any(r.method == "POST" for r in fake_crm.requests_to("customerly") if r.json and
               r.json["users"][0]["email"] == email)

    fake_crm.add_customerly_user(email, attributes={"first_name": "Lea", "last_name": "Privilege"}, tags=["a", "b"])
    _, answer = await bridge.send(customerly_delivery(email) | {"type": "user.tagged"}, wpf_action="update")
    job = await bridge.wait_job(answer["job_id"])
    assert job["status"] == "done" and job["outcome"]["outcome"] == "updated", job
    assert set(job["outcome"]["changed"]) >= {"last_name", "tags"}
    assert site.users_with_email(email) == [user_id]


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_a_key_holder_cannot_take_over_the_administrator(site, bridge_user, transport, tmp_path, wp_stack,
                                                               fake_crm, start_bridge):
    """With the access key only: linking a contact ID to the administrator's email, then moving the email, asking
    for administrator, sending a password, or a CRM record with the administrator's email changes nothing."""
    boss = site.new_user("e2eboss", "administrator")
    before = site.user_state(boss.id)
    bridge = await start_bridge(least_privilege(tmp_path, wp_stack, fake_crm, bridge_user, transport))
    attacker, evil = unique_email("attacker"), "evil-" + unique_email("c").split("@")[0]
    attempts = [
        ({"wpf_action": "update", "contact_id": evil, "email": boss.email}, customerly_delivery(boss.email)),
        ({"wpf_action": "update", "contact_id": evil, "email": attacker}, customerly_delivery(attacker)),
        ({"wpf_action": "add", "email": boss.email, "role": "administrator"}, customerly_delivery(boss.email)),
        ({"wpf_action": "add", "email": boss.email},
         {"type": "user.updated", "data": {"user": {"data": {"email": boss.email, "attributes": {
             "user_pass": "Pwned-pass-123456", "first_name": "Pwned"}}}}}),
        ({"wpf_action": "update", "contact_id": boss.contact_id, "email": attacker}, customerly_delivery(attacker)),
        # Without query overrides (the connection takes none but role): these reach the plugin.
        ({"wpf_action": "update"}, customerly_delivery(boss.email)),
        ({"wpf_action": "add", "role": "administrator"}, customerly_delivery(boss.email.upper())),
    ]
    fake_crm.add_customerly_user(boss.email, attributes={"first_name": "Pwned", "user_pass": "Pwned-pass-654321"})
    with capture_logs() as logs:
        results = [await bridge.send(body, **query) for query, body in attempts]
        jobs = [await bridge.wait_job(answer["job_id"]) if status in (200, 202) else None for status, answer in results]
    for (query, _), (status, answer), job in zip(attempts, results, jobs):
        assert status in (202, 200, 400, 401, 403, 422), (query, status, answer)
        if {"email", "contact_id"} & set(query):  # the default connection takes no such override
            assert (status, answer["error"]) == (400, "override_not_allowed"), (query, answer)
        if job is not None:
            outcome = (job["outcome"] or {}).get("outcome")
            assert outcome in ("skipped_privileged", "no_user", "not_in_crm", "created") or job["status"] == "dead", job
            if outcome == "created":  # a new account for the attacker's address, never the administrator's
                assert job["outcome"]["user_id"] != boss.id
    assert site.user_state(boss.id) == before
    skipped = [e for e in logs if e["event"] == "sync.skipped_privileged"]
    assert skipped and all(e["log_level"] == "warning" and e["user_id"] == boss.id for e in skipped)


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_an_email_change_notifies_the_old_address(site, bridge_user, transport, mail_log):
    """WordPress's own "Email Changed" notice reaches the old address, and only it; notify_email_change=false sends none."""
    async with client_for(site, bridge_user, transport) as wp:
        for notify in (True, False):
            old, new = unique_email("old"), unique_email("new")
            contact = "C-" + old.split("@")[0]
            created = await wp.upsert(UpsertRequest(email=old, contact_id=contact, contact_id_key=CONTACT_KEY))
            moved = await wp.upsert(UpsertRequest(email=new, contact_id=contact, contact_id_key=CONTACT_KEY,
                                                  notify_email_change=notify))
            assert created.created and moved.user_id == created.user_id and moved.changed == ["email"]
            notices = mail_log.to(old)
            assert mail_log.to(new) == []
            if notify:
                assert len(notices) == 1 and "Email Changed" in notices[0]["subject"], notices
                assert new in notices[0]["message"] or "changed" in notices[0]["message"].lower()
            else:
                assert notices == []


async def test_the_bridge_setting_turns_the_notice_off(site, bridge_user, tmp_path, wp_stack, fake_crm, start_bridge,
                                                       mail_log):
    """wordpress.email_change_notice = false reaches the plugin: a CRM email change sends no notice."""
    for notice in (True, False):
        old, new = unique_email("ucold"), unique_email("ucnew")
        contact = fake_crm.add_usercom_user(email=old, first_name="Una")
        connections = {"usercom": {"crm": "usercom", "base_url": fake_crm.usercom_base,
                                   "secrets": {"token": "uc-test-key"}}}
        bridge = await start_bridge(least_privilege(tmp_path, wp_stack, fake_crm, bridge_user, "rest",
                                                    wordpress={"email_change_notice": notice},
                                                    connections=connections,
                                                    database={"path": str(tmp_path / f"n{notice}.db")}))
        _, first = await bridge.send({"user": {"id": contact["id"]}}, path="/hooks/usercom")
        assert (await bridge.wait_job(first["job_id"]))["outcome"]["outcome"] == "created"
        fake_crm.usercom_user(contact["id"])["email"] = new
        _, second = await bridge.send({"user": {"id": contact["id"]}, "changed": "email"}, path="/hooks/usercom")
        job = await bridge.wait_job(second["job_id"])
        assert job["outcome"]["outcome"] == "updated" and "email" in job["outcome"]["changed"], job
        assert len(mail_log.to(old)) == (1 if notice else 0)
