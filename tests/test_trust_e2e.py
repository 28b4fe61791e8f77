"""The trust model end to end, against the real WordPress and the fake CRM: a holder of the access
key (which leaks: it travels in URLs) can only make the bridge sync what the CRM says."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress


def delivery_with_claims(email: str) -> dict:
    """A Customerly-shaped delivery whose body claims account fields the CRM record does not have."""
    body = customerly_delivery(email)
    body["data"]["user"]["data"].update({
        "name": "Evil Name", "attributes": {"first_name": "Mallory", "user_pass": "attacker-chosen-pw-1",
                                            "user_login": "mallory"},
    })
    return body


async def test_a_contact_the_crm_does_not_know_creates_nothing_whatever_the_delivery_says(
        tmp_path, wp_stack, fake_crm, start_bridge):
    """add for an email the CRM has no contact for: not_in_crm, no WordPress account, no write-back."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    email = unique_email("unknown")
    fake_crm.clear()
    status, answer = await b.send(delivery_with_claims(email), wpf_action="add", send_notification="true")
    assert status == 202
    job = await b.wait_job(answer["job_id"])
    assert job["status"] == "done" and job["outcome"]["outcome"] == "not_in_crm", job
    assert WordPressProbe(wp_stack).user_count(email) == 0
    assert not [r for r in fake_crm.requests_to("customerly") if r.method == "POST"]


async def test_the_crm_record_is_the_only_source_of_account_fields(tmp_path, wp_stack, fake_crm, start_bridge):
    """The delivery names the contact; names, login and password come from the CRM record, so the
    body's claims (a chosen password, a chosen login) are not applied."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    email = unique_email("source")
    fake_crm.add_customerly_user(email, name="Real Person", attributes={"first_name": "Real"})
    status, answer = await b.send(delivery_with_claims(email), wpf_action="add")
    job = await b.wait_job(answer["job_id"])
    assert job["status"] == "done" and job["outcome"]["outcome"] == "created", job
    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(email)
    assert (user["first_name"], user["name"]) == ("Real", "Real Person")
    assert user["username"] != "mallory"
    assert not await wp.can_log_in(user["username"], "attacker-chosen-pw-1")
    # The generated password went to the CRM, and it is the one that logs in.
    written = fake_crm.customerly_user(email)["attributes"]["wp_password"]
    assert await wp.can_log_in(user["username"], written)


async def test_a_role_is_granted_only_when_the_operator_listed_it(tmp_path, wp_stack, fake_crm, start_bridge):
    """Without allowed_roles, role=editor (and role=administrator) give the default role, with a warning."""
    config = bridge_config(tmp_path, wp_stack, fake_crm)
    del config["wordpress"]["allowed_roles"]
    b = await start_bridge(config)
    wp = WordPressProbe(wp_stack)
    for role in ("editor", "administrator"):
        email = unique_email(role)
        fake_crm.add_customerly_user(email)
        _, answer = await b.send(customerly_delivery(email), wpf_action="add", role=role)
        job = await b.wait_job(answer["job_id"])
        assert job["status"] == "done", job
        [user] = await wp.users_with_email(email)
        assert (await wp.user(user["id"]))["roles"] == ["subscriber"]
        assert job["outcome"]["warnings"], job


async def test_an_idn_email_is_created_in_punycode_and_a_refused_one_is_never_acknowledged(
        tmp_path, wp_stack, fake_crm, start_bridge):
    """bücher.example becomes xn--bcher-kva.example and WordPress takes it; a NUL in the email is a 422."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    local = f"idn-{uuid.uuid4().hex[:8]}"
    puny = f"{local}@xn--bcher-kva.example"
    fake_crm.add_customerly_user(puny, name="Idn User")
    status, answer = await b.send(customerly_delivery(f"{local}@bücher.example"), wpf_action="add")
    assert status == 202, answer
    job = await b.wait_job(answer["job_id"])
    assert job["status"] == "done" and job["outcome"]["outcome"] == "created", job
    assert WordPressProbe(wp_stack).user_count(puny) == 1
    status, answer = await b.send(customerly_delivery(f"{local}\x00@example.com"), wpf_action="add")
    assert (status, answer["error"]) == (422, "invalid_email")
