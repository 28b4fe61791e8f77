"""The plugin's one meta-key policy (WPSB_Meta_Keys), on the real WordPress, over REST and XML-RPC:
keys that MySQL would match to a protected row (other case, trailing space, another blog's
prefix), sessions, application passwords, underscore keys, the plugin's own keys and odd
characters are refused, on write (meta, tags_key, contact_id_key) and on read (lookup, delete),
for non-administrator callers and the administrator alike; the database is left as it was."""

from __future__ import annotations

import pytest

from bridge.clients.wordpress import UpsertRequest
from tests.plugin_actors import CONTACT_KEY, TAGS_KEY, client_for, make_site, refusal, role

pytestmark = pytest.mark.wordpress

PROTECTED = [
    "WP_CAPABILITIES",
    "wp_capabilities ",
    "wp_capabilities",
    "wp_2_capabilities",
    "Wp_User_Level",
    "wp_user_level",
    "other_install_capabilities",
    "SESSION_TOKENS",
    "session_tokens  ",
    "_application_passwords",
    "_APPLICATION_PASSWORDS",
    "_wpsb_request_id",
    "wpsb_anything",
    "_two_factor_totp_key",
    "ｗｐ_capabilities",  # full-width letters: utf8mb4_unicode_ci folds them to ASCII
]
MALFORMED = [
    "",
    "City",  # upper case: MySQL would match "city", WordPress's meta cache would not
    "wp_capabilitíes",  # accent-insensitive collation: this is wp_capabilities to MySQL
    "wp_capabilities\t",
    "city name",
    "city;drop",
    "-city",
    "k" * 192,
    "ｃｉｔｙ",
    "city\u200b",
]
REFUSED = [(key, "wpsb_protected_meta", 403) for key in PROTECTED] + [(key, "wpsb_invalid_meta_key", 400) for key in MALFORMED]


@pytest.fixture(scope="module")
def site(wp_stack):
    return make_site(wp_stack)


@pytest.fixture(scope="module")
def people(site):
    """A list_users-only caller, a bridge-role caller, and a customer both of them target."""
    lister, bridge, customer = site.new_users([("lister", role("lister"), {"app_password": True}),
                                               ("bridge", "wpsb_bridge", {"app_password": True}),
                                               ("cust", "customer", {})])
    return {"lister": lister, "bridge": bridge, "customer": customer}


def expected(key, code, status, transport):
    """The refusals a key may get: XML-RPC's parser (IXR) trims string values and struct member
    names, so a key with a trailing tab or spaces arrives as the protected key itself."""
    if transport == "xmlrpc" and key != key.strip():
        return {(code, status), ("wpsb_protected_meta", 403)}
    return {(code, status)}


async def assert_refused_writes(wp, target, refused, transport, fields=("meta", "tags_key", "contact_id_key")):
    """Each key, given as each field, is refused with its typed error naming the field."""
    for key, code, status in refused:
        attempts = {
            "meta": UpsertRequest(email=target.email, meta={key: {"administrator": True}}),
            "tags_key": UpsertRequest(email=target.email, tags=["administrator"], tags_key=key),
            "contact_id_key": UpsertRequest(email=target.email, contact_id="a:1:{}", contact_id_key=key),
        }
        for field in fields:
            if key == "" and field != "meta":
                continue  # an empty key argument means "not given"
            exc = await refusal(wp.upsert(attempts[field]))
            assert (exc.code, exc.status) in expected(key, code, status, transport), (field, key, exc)
            assert f'"{field}"' in exc.message, exc


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_refused_keys_cannot_be_written(site, people, transport):
    """Every refused key, as meta, tags_key or contact_id_key, is a typed error naming it; nothing is written."""
    target = people["customer"]
    before = site.user_state(target.id)
    async with client_for(site, people["bridge"], transport) as wp:
        await assert_refused_writes(wp, target, REFUSED, transport)
    assert site.user_state(target.id) == before


# The aliases of the issue: every caller, on its own account and on a customer's.
ALIASES = [(k, "wpsb_protected_meta", 403) for k in ("WP_CAPABILITIES", "wp_capabilities ", "wp_2_capabilities",
                                                    "Wp_User_Level", "SESSION_TOKENS", "_application_passwords",
                                                    "_wpsb_request_id")]


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
@pytest.mark.parametrize("caller", ["list_users-only", "administrator"])
async def test_no_caller_gets_past_the_key_policy(site, people, caller, transport):
    """A list_users-only user (on itself too) and the administrator are refused the same aliases; nothing changes."""
    who = people["lister"] if caller == "list_users-only" else site.admin
    targets = [people["customer"], people["lister"]]
    before = {t.id: site.user_state(t.id) for t in targets}
    async with client_for(site, who, transport) as wp:
        for target in targets:
            await assert_refused_writes(wp, target, ALIASES, transport, fields=("meta",))
    assert {t.id: site.user_state(t.id) for t in targets} == before
    assert site.roles_of(people["lister"].id) == [role("lister")]


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_refused_keys_cannot_be_read(site, people, transport):
    """A list_users caller cannot read refused keys through lookup (meta_keys, tags_key, contact_id_key) nor name them in delete."""
    target = people["customer"]
    async with client_for(site, people["lister"], transport) as wp:
        for key, code, status in REFUSED:
            if key == "":
                continue  # an empty key argument means "not given"
            calls = {
                "meta_keys": lambda: wp.lookup(email=target.email, meta_keys=[key]),
                "tags_key": lambda: wp.lookup(email=target.email, tags_key=key),
                "contact_id_key": lambda: wp.lookup(contact_id="x", contact_id_key=key),
                "delete": lambda: wp.delete({"email": target.email, "contact_id": "x", "contact_id_key": key,
                                             "policy": "remove_roles"}),
            }
            if transport == "rest" and key != key.strip():
                del calls["meta_keys"]  # REST meta_keys is a comma list the plugin trims
            for field, call in calls.items():
                exc = await refusal(call())
                assert (exc.code, exc.status) in expected(key, code, status, transport), (field, key, exc)
    async with client_for(site, people["lister"], transport) as wp:
        user = await wp.lookup(email=target.email, meta_keys=["city"], tags_key=TAGS_KEY, contact_id_key=CONTACT_KEY)
    assert user["meta"] == {"city": "Turin"} and user["tags"] == ["staff"] and user["contact_id"] == target.contact_id
    assert site.roles_of(target.id) == ["customer"]


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_the_refusal_names_the_key_and_the_argument(site, people, transport):
    """The error says which argument and which key (odd characters escaped), with a 403 or 400 status."""
    async with client_for(site, people["bridge"], transport) as wp:
        exc = await refusal(wp.upsert(UpsertRequest(email=people["customer"].email, meta={"WP_CAPABILITIES": 1})))
        assert exc.code == "wpsb_protected_meta" and exc.status == 403
        assert '"meta"' in exc.message and '"WP_CAPABILITIES"' in exc.message
        exc = await refusal(wp.lookup(email=people["customer"].email, tags_key="city\tname"))
        assert exc.code == "wpsb_invalid_meta_key" and exc.status == 400
        assert '"tags_key"' in exc.message and '"city\\tname"' in exc.message


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_plain_keys_still_work(site, people, transport):
    """Keys of the accepted form are written and read as before (letters, digits, _ - . :)."""
    async with client_for(site, people["bridge"], transport) as wp:
        meta = {"crm.plan": "gold", "crm:score": 5, "x-y_z9": "ok"}
        result = await wp.upsert(UpsertRequest(email=people["customer"].email, meta=meta))
        assert result.outcome in ("updated", "unchanged"), result
        user = await wp.lookup(email=people["customer"].email, meta_keys=list(meta))
    assert user["meta"] == {"crm.plan": "gold", "crm:score": "5", "x-y_z9": "ok"}
