"""A user created with no password anyone will know (no CRM user_pass, no write-back) gets an
unusable ``user_pass`` instead of the hash of a throwaway password (plugin 2.2, both WordPress
lines): nobody logs in with it, not even with the stored value, and the ways in still work, the
welcome mail's set-password link and "Lost your password?", after which the chosen password is
hashed as WordPress hashes any. A written-back password is still a real hash."""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest

from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.plugin_actors import Site, own_hasher
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


# The phpass portable hash (2^10 rounds) of an empty password, to show phpass_accepts can say yes.
EMPTY_HASH = "$P$DiIhWjUZkpHM5htJ8n5kvOMyqMQknl."


def phpass_accepts(site: Site, password: str, stored: str) -> bool:
    """Whether WordPress's phpass (the site's own class-phpass.php) verifies ``password`` against
    ``stored``."""
    code = ("require $argv[1];"
            " echo (new PasswordHash(8, true))->CheckPassword($argv[2], $argv[3]) ? 'yes' : 'no';")
    out = subprocess.run(["php", "-r", code, "--", str(site.site_dir / "wp-includes" / "class-phpass.php"),
                          password, stored], check=True, capture_output=True, text=True).stdout
    return out == "yes"


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


async def test_a_site_with_its_own_password_hasher_gets_a_random_password_hashed_by_it(
        tmp_path, wp_stack, fake_crm, start_bridge, mail_log):
    """A plugin replaced wp_hash_password() (pluggable): the companion cannot know that the site's
    hasher would take an unusable value, so it hashes a random password nobody is told with the
    site's own hasher instead (SECURITY.md §6): user_pass is that hasher's hash, not "*..."; nobody
    logs in with an empty password; the welcome mail's link still sets one that does."""
    b = await start_bridge(shop(tmp_path, wp_stack, fake_crm))
    wp = WordPressProbe(wp_stack)
    email = unique_email("ownhash")
    site = Site(wp_stack)
    with own_hasher(site):
        outcome = await created(b, email, send_notification="true")
        stored = wp.user_pass(outcome["user_id"])
        assert stored.startswith("$P$D") and len(stored) == 34, stored  # phpass at 2^10: the site's own
        # Not the hash of an empty password (the login form refuses an empty one before checking).
        assert not phpass_accepts(site, "", stored) and phpass_accepts(site, "", EMPTY_HASH)
        chosen = f"Chosen-{uuid.uuid4().hex}"
        assert await wp.reset_password(reset_link(mail_log, email), chosen)
        assert wp.user_pass(outcome["user_id"]).startswith("$P$D")  # set through the site's hasher too
    assert await wp.can_log_in(outcome["login"], chosen)
    # The control: without the replacement, the same call stores the unusable value.
    other = await created(b, unique_email("ownhash"))
    assert wp.user_pass(other["user_id"]).startswith("*")
