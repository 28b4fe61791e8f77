"""A user created with no password anyone will know (no CRM user_pass, no write-back) gets an
unusable ``user_pass`` instead of the hash of a throwaway password (plugin 2.2, both WordPress
lines): nobody logs in with it, not even with the stored value, and the ways in still work, the
welcome mail's set-password link and "Lost your password?", after which the chosen password is
hashed as WordPress hashes any. A written-back password is still a real hash."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress
# 6.1 writes ?action=rp&key=..&login=.., 6.8 ?login=..&key=..&action=rp.
RESET_LINK = re.compile(r"https?://[^\s<>]+wp-login\.php\?[^\s<>]*\baction=rp\b[^\s<>]*")


def shop(tmp_path, wp_stack, fake_crm):
    """A connection that takes the contact from the delivery and writes nothing back."""
    return bridge_config(tmp_path, wp_stack, fake_crm, connections={
        "shop": {"crm": "generic", "fetch_contact": False, "connector": {
            "contact_id_paths": ["contact.email"], "email_paths": ["contact.email"], "record_path": "contact",
            "fields": {"email": "user_email", "first_name": "first_name"}, "meta_prefix": "shop"}}})


def reset_link(mail_log, email: str) -> str:
    [link] = RESET_LINK.findall(mail_log.to(email)[-1]["message"])
    return link


async def created(b, email: str, **query: str) -> dict:
    _, answer = await b.send({"contact": {"email": email, "first_name": "Nobody"}}, path="/hooks/shop",
                             wpf_action="add", **query)
    job = await b.wait_job(answer["job_id"])
    assert job["status"] == "done" and job["outcome"]["outcome"] == "created", job["last_error"]
    return job["outcome"]


async def test_the_welcome_mail_link_sets_the_first_password(tmp_path, wp_stack, fake_crm, start_bridge,
                                                             mail_log):
    """add with send_notification: user_pass is "*" and 31 random characters, per user; neither an
    empty password nor the stored value logs in; the mailed link sets a password that does."""
    b = await start_bridge(shop(tmp_path, wp_stack, fake_crm))
    wp = WordPressProbe(wp_stack)
    emails = [unique_email("unusable"), unique_email("unusable")]
    outcomes = [await created(b, e, send_notification="true") for e in emails]
    stored = [wp.user_pass(o["user_id"]) for o in outcomes]
    assert all(re.fullmatch(r"\*[A-Za-z0-9]{31}", s) for s in stored) and stored[0] != stored[1]
    login = outcomes[0]["login"]
    for guess in ("", stored[0], stored[0][1:]):
        assert not await wp.can_log_in(login, guess)
    chosen = f"Chosen-{uuid.uuid4().hex}"
    assert await wp.reset_password(reset_link(mail_log, emails[0]), chosen)
    assert await wp.can_log_in(login, chosen)
    assert wp.user_pass(outcomes[0]["user_id"]).startswith(("$P$", "$wp$2y$"))


async def test_lost_your_password_works_for_a_user_created_without_one(tmp_path, wp_stack, fake_crm,
                                                                      start_bridge, mail_log):
    """No welcome mail: "Lost your password?" mails a link, and the password chosen with it logs in."""
    b = await start_bridge(shop(tmp_path, wp_stack, fake_crm))
    wp = WordPressProbe(wp_stack)
    email = unique_email("lostpw")
    outcome = await created(b, email)
    assert mail_log.to(email) == []
    await wp.ask_for_reset(email)
    chosen = f"Chosen-{uuid.uuid4().hex}"
    assert await wp.reset_password(reset_link(mail_log, email), chosen)
    assert await wp.can_log_in(outcome["login"], chosen)


async def test_a_password_written_back_to_the_crm_is_hashed_and_logs_in(tmp_path, wp_stack, fake_crm,
                                                                        start_bridge):
    """Customerly with return_password_field: the generated password is a real hash and logs in."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    email = unique_email("wb")
    fake_crm.add_customerly_user(email)
    _, answer = await b.send(customerly_delivery(email), wpf_action="add")
    job = await b.wait_job(answer["job_id"])
    assert job["outcome"]["written_back"] == ["wp_password"]
    password = fake_crm.customerly_user(email)["attributes"]["wp_password"]
    wp = WordPressProbe(wp_stack)
    assert not wp.user_pass(job["outcome"]["user_id"]).startswith("*")
    assert await wp.can_log_in(job["outcome"]["login"], password)
