"""The WordPress side against the real site, through both transports (REST and XML-RPC):
the companion plugin's upsert, its lock, role policy, exact email matching, mails, meta."""

from __future__ import annotations

import asyncio

import pytest

from bridge.clients.wordpress import API_VERSION, UpsertRequest, make_wordpress
from bridge.errors import AuthFailed, Permanent
from bridge.settings import load_settings
from tests.conftest import unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress


@pytest.fixture(params=["rest", "xmlrpc"])
async def wp(request, wp_stack):
    """The bridge's WordPress client for each transport."""
    settings = load_settings(None, wordpress={
        "url": wp_stack["WPSB_WP_URL"], "username": wp_stack["WPSB_WP_USER"],
        "application_password": wp_stack["WPSB_WP_APP_PASSWORD"], "transport": request.param, "max_connections": 8,
    })
    client = make_wordpress(settings)
    yield client
    await client.close()


@pytest.fixture
def probe(wp_stack):
    return WordPressProbe(wp_stack)


def req(email: str, **kw) -> UpsertRequest:
    return UpsertRequest(email=email, login=kw.pop("login", email), password=kw.pop("password", "Pw-123456789abc"),
                         tags_key="customerly_tags", contact_id_key="customerly_contact_id", **kw)


async def test_status_and_roles(wp):
    """The plugin reports its API version; roles come as slug → name, customer included."""
    status = await wp.status()
    assert status["api_version"] == API_VERSION and status["plugin_version"]
    roles = await wp.roles()
    assert roles["customer"] == "Customer" and "administrator" in roles


async def test_fifty_concurrent_identical_upserts_make_one_account(wp, probe):
    """50 simultaneous creates for one email (4 PHP workers) end with exactly one account, created once."""
    email = unique_email("race")
    results = await asyncio.gather(*(wp.upsert(req(email, login=f"race{i}-{email}")) for i in range(50)))
    assert probe.user_count(email) == 1
    assert sum(r.created for r in results) == 1
    assert len({r.user_id for r in results}) == 1


async def test_role_policy_in_wordpress(wp, probe):
    """administrator is never granted and an unknown role falls back to the default, with a warning."""
    for role in ("administrator", "no-such-role"):
        email = unique_email("role")
        result = await wp.upsert(req(email, role=role))
        assert result.created and result.role == "subscriber" and result.warnings
        [user] = await probe.users_with_email(email)
        assert (await probe.user(user["id"]))["roles"] == ["subscriber"]


async def test_existing_administrator_keeps_the_role(wp, probe):
    """An existing administrator is never demoted by an upsert asking for another role."""
    email = unique_email("boss")
    admin_id = await probe.create_admin(email, email.split("@")[0], "Adm1n-pass-long")
    result = await wp.upsert(req(email, role="customer", first_name="Boss"))
    assert result.user_id == admin_id and not result.created
    assert (await probe.user(admin_id))["roles"] == ["administrator"]


async def test_exact_email_matching(wp, probe):
    """alicia@ never matches malicia@; '+' addresses and mixed case find the right user."""
    tag = unique_email("x").split("@")[0]
    malicia = await wp.upsert(req(f"malicia.{tag}@example.com"))
    alicia = await wp.upsert(req(f"alicia.{tag}@example.com"))
    assert alicia.created and alicia.user_id != malicia.user_id
    plus = await wp.upsert(req(f"a+b.{tag}@example.com"))
    again = await wp.upsert(req(f"A+B.{tag.upper()}@Example.COM"))
    assert plus.created and not again.created and again.user_id == plus.user_id
    found = await wp.lookup(email=f"ALICIA.{tag}@example.com")
    assert found["id"] == alicia.user_id


async def test_unicode_names_and_tags_array(wp, probe):
    """Unicode names are stored as given; tags are stored as an array in user meta."""
    email = unique_email("uni")
    result = await wp.upsert(req(email, first_name="Zoë", last_name="Ñúñez-Øster", display_name="Zoë 🌻", tags=["früh", "b"]))
    user = await probe.user(result.user_id)
    assert (user["first_name"], user["last_name"], user["name"]) == ("Zoë", "Ñúñez-Øster", "Zoë 🌻")
    assert probe.meta(result.user_id, "customerly_tags") == ["früh", "b"]


async def test_welcome_mail_only_on_create_with_notification(wp, mail_log):
    """send_notification mails once on create; never on update, never without it."""
    with_mail, without = unique_email("mail"), unique_email("nomail")
    await wp.upsert(req(with_mail, send_notification=True))
    await wp.upsert(req(with_mail, send_notification=True, first_name="Again"))
    await wp.upsert(req(without))
    assert len(mail_log.to(with_mail)) == 1
    assert mail_log.to(without) == []


async def test_password_and_login_as_given_and_it_logs_in(wp, probe):
    """A CRM-provided login and password are used as given; the password logs in to WordPress."""
    email = unique_email("given")
    login = "given_" + email.split("@")[0][-10:]
    result = await wp.upsert(req(email, login=login, password="Crm-Given-pass-42"))
    assert result.login == login
    assert await probe.can_log_in(login, "Crm-Given-pass-42")


async def test_second_identical_update_changes_nothing(wp):
    """Only real changes are written: repeating an upsert reports unchanged and no changed fields."""
    email = unique_email("same")
    first = await wp.upsert(req(email, first_name="A", meta={"city": "Oslo"}, tags=["x"], contact_id=email))
    second = await wp.upsert(req(email, first_name="A", meta={"city": "Oslo"}, tags=["x"], contact_id=email))
    assert first.created and second.outcome == "unchanged" and second.changed == []


async def test_update_only_when_no_user(wp):
    """create=false for an unknown contact reports no_user and creates nothing."""
    result = await wp.upsert(req(unique_email("ghost"), create=False))
    assert result.outcome == "no_user" and result.user_id is None


async def test_request_id_makes_a_repeated_create_report_created(wp, mail_log):
    """A retried create (same request_id) reports created/replayed, without a second mail."""
    email = unique_email("replay")
    first = await wp.upsert(req(email, request_id="job-x1", send_notification=True))
    again = await wp.upsert(req(email, request_id="job-x1", send_notification=True))
    assert first.created and again.created and again.replayed and again.user_id == first.user_id
    assert len(mail_log.to(email)) == 1


async def test_invalid_email_is_permanent(wp):
    """Invalid data is a permanent error, not something to retry."""
    with pytest.raises(Permanent):
        await wp.upsert(req("not-an-email"))


async def test_bad_application_password_is_auth_failed(wp_stack):
    """Bad credentials are AuthFailed for both transports."""
    for transport in ("rest", "xmlrpc"):
        settings = load_settings(None, wordpress={"url": wp_stack["WPSB_WP_URL"], "username": "admin",
                                                  "application_password": "wrong pass word here", "transport": transport})
        client = make_wordpress(settings)
        try:
            with pytest.raises(AuthFailed):
                await client.status()
        finally:
            await client.close()


async def test_contact_id_finds_the_user_after_an_email_change(wp, probe):
    """The CRM contact ID links the user (through the plugin's contact index): a new email updates the same account."""
    old, new = unique_email("moved"), unique_email("moved")
    contact = "C-" + old.split("@")[0]
    first = await wp.upsert(req(old, contact_id=contact))
    second = await wp.upsert(req(new, contact_id=contact))
    assert first.created and not second.created and second.user_id == first.user_id and "email" in second.changed
    assert probe.user_count(old) == 0 and probe.user_count(new) == 1
    found = await wp.lookup(contact_id=contact, contact_id_key="customerly_contact_id")
    assert found["id"] == first.user_id and found["email"] == new


async def test_contact_index_follows_deletes(wp, probe):
    """After the user is deleted, the same contact ID creates a new account instead of pointing at the old one."""
    email = unique_email("reborn")
    contact = "C-" + email.split("@")[0]
    first = await wp.upsert(req(email, contact_id=contact))
    gone = await wp.delete({"email": email, "policy": "delete", "reassign_to": 1})
    assert gone["outcome"] == "deleted"
    again = await wp.upsert(req(email, contact_id=contact))
    assert again.created and again.user_id != first.user_id
