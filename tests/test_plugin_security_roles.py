"""Role grants (WPSB_Role_Grants) and the bridge's least-privilege role (WPSB_Bridge_Role) on the
real WordPress, over REST and XML-RPC: every role the plugin assigns, default_role included, needs
promote_users, must be in the caller's editable_roles and is never privileged (administrator,
editor); the wpsb_bridge role has exactly what the bridge needs, is repaired when changed, cannot
reach a privileged user through core either, and status says who the caller is."""

from __future__ import annotations

import aiohttp
import pytest

from bridge.clients.http import basic_auth
from bridge.clients.wordpress import UpsertRequest
from tests.conftest import unique_email
from tests.plugin_actors import BRIDGE_CAPS, client_for, make_site, refusal, role

pytestmark = pytest.mark.wordpress


@pytest.fixture(scope="module")
def site(wp_stack):
    return make_site(wp_stack)


@pytest.fixture(scope="module")
def people(site):
    names = ("lister", "creator", "bridge")
    made = site.new_users([("lister", role("lister"), {"app_password": True}),
                           ("creator", role("creator"), {"app_password": True}),
                           ("bridge", "wpsb_bridge", {"app_password": True})])
    return dict(zip(names, made))


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_a_create_users_only_caller_creates_nobody(site, people, transport):
    """Without promote_users no user is created, whatever role or default_role is asked: a typed 403 naming promote_users."""
    async with client_for(site, people["creator"], transport) as wp:
        for extra in ({}, {"default_role": "editor"}, {"role": "subscriber"}, {"role": "editor"}):
            email = unique_email("nopromote")
            exc = await refusal(wp.upsert(UpsertRequest(email=email, **extra)))
            assert (exc.code, exc.status) == ("wpsb_forbidden", 403) and "promote_users" in exc.message, (extra, exc)
            assert site.users_with_email(email) == []


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_a_list_users_only_caller_creates_nobody(site, people, transport):
    """list_users alone may look users up but not create them (403 naming create_users)."""
    email = unique_email("nocreate")
    async with client_for(site, people["lister"], transport) as wp:
        exc = await refusal(wp.upsert(UpsertRequest(email=email)))
    assert (exc.code, exc.status) == ("wpsb_forbidden", 403) and "create_users" in exc.message
    assert site.users_with_email(email) == []


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
@pytest.mark.parametrize("caller", ["bridge role", "administrator"])
async def test_refused_roles_fall_back_to_the_default_role(site, people, caller, transport):
    """role administrator, editor (unfiltered_html), wpsb_bridge, or one outside editable_roles: the new user gets default_role, with a warning."""
    who = people["bridge"] if caller == "bridge role" else site.admin
    async with client_for(site, who, transport) as wp:
        for asked in ("administrator", "Administrator", "editor", "Editor", "wpsb_bridge", role("hidden"), role("shop")):
            result = await wp.upsert(UpsertRequest(email=unique_email("grant"), role=asked, default_role="customer"))
            assert result.created and result.role == "customer", (asked, result)
            assert result.warnings and "not granted" in result.warnings[0], (asked, result)
            assert site.roles_of(result.user_id) == ["customer"]
        result = await wp.upsert(UpsertRequest(email=unique_email("grant"), role="author"))
        assert result.created and result.role == "author" and result.warnings == []


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
@pytest.mark.parametrize("caller", ["bridge role", "administrator"])
async def test_a_default_role_that_cannot_be_granted_creates_nobody(site, people, caller, transport):
    """default_role editor, administrator or outside editable_roles: typed 403 wpsb_role_forbidden; unknown: 400."""
    who = people["bridge"] if caller == "bridge role" else site.admin
    async with client_for(site, who, transport) as wp:
        for default in ("editor", "administrator", role("hidden"), "wpsb_bridge"):
            email = unique_email("default")
            exc = await refusal(wp.upsert(UpsertRequest(email=email, default_role=default)))
            assert (exc.code, exc.status) == ("wpsb_role_forbidden", 403), (default, exc)
            assert site.users_with_email(email) == []
        email = unique_email("default")
        exc = await refusal(wp.upsert(UpsertRequest(email=email, default_role="no_such_role")))
        assert (exc.code, exc.status) == ("wpsb_invalid_args", 400)
        assert site.users_with_email(email) == []


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_an_existing_user_keeps_the_role_when_the_new_one_is_refused(site, people, transport):
    """On update a refused role leaves the roles as they are (warning); a grantable one replaces them."""
    async with client_for(site, people["bridge"], transport) as wp:
        user = await wp.upsert(UpsertRequest(email=unique_email("keep"), role="customer"))
        for asked in ("editor", "administrator", role("hidden"), "no_such_role"):
            result = await wp.upsert(UpsertRequest(email=user_email(site, user.user_id), role=asked))
            assert result.outcome == "unchanged" and result.role == "customer" and result.warnings, (asked, result)
        result = await wp.upsert(UpsertRequest(email=user_email(site, user.user_id), role="contributor"))
        assert result.changed == ["role"] and result.role == "contributor"
    assert site.roles_of(user.user_id) == ["contributor"]


def user_email(site, user_id):
    [email] = site.sql(f"SELECT user_email FROM wp_users WHERE ID = {int(user_id)}")
    return email


def test_the_bridge_role_has_exactly_what_the_bridge_needs(site):
    """wpsb_bridge: read, list_users, create_users, edit_users, promote_users; nothing else."""
    [caps] = site.setup([{"op": "role_caps", "slug": "wpsb_bridge"}])
    assert {cap for cap, granted in caps.items() if granted} == BRIDGE_CAPS


def test_the_bridge_role_is_repaired_when_changed(site):
    """A capability added to wpsb_bridge by hand is gone at the next request: the plugin resets the role on init."""
    site.setup([{"op": "add_role_cap", "slug": "wpsb_bridge", "cap": "manage_options"}])
    [caps] = site.setup([{"op": "role_caps", "slug": "wpsb_bridge"}])  # a new request: WordPress ran init
    assert set(caps) == BRIDGE_CAPS


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_status_says_who_the_caller_is(site, people, transport):
    """status.caller: roles, administrator or not, missing capabilities, roles it may grant."""
    answers = {}
    for name, who in (("bridge", people["bridge"]), ("lister", people["lister"]), ("admin", site.admin)):
        async with client_for(site, who, transport) as wp:
            answers[name] = (await wp.status())["caller"]
    bridge, lister, admin = answers["bridge"], answers["lister"], answers["admin"]
    assert bridge["roles"] == ["wpsb_bridge"] and bridge["has_bridge_role"] is True
    assert bridge["is_administrator"] is False and bridge["missing_capabilities"] == []
    assert bridge.get("excess_capabilities", []) == []
    assert set(bridge["grantable_roles"]) >= {"subscriber", "customer", "author", "contributor"}
    assert not set(bridge["grantable_roles"]) & {"administrator", "editor", "wpsb_bridge", role("hidden"), role("shop")}
    assert lister["missing_capabilities"] == ["create_users", "edit_users", "promote_users"]
    assert lister["is_administrator"] is False and lister.get("grantable_roles", []) == []
    assert admin["is_administrator"] is True and "manage_options" in admin["excess_capabilities"]


async def test_the_bridge_role_cannot_take_over_an_administrator_through_core_rest(site, people):
    """With the bridge's credentials, core's own REST API cannot change an administrator's email or password,
    delete one, mint an application password for one, or assign administrator or editor: the role's guards
    hold outside the plugin too."""
    boss, customer = site.new_users([("coreboss", "administrator", {}), ("corecust", "customer", {})])
    before = {boss.id: site.user_state(boss.id), customer.id: site.user_state(customer.id)}
    auth = {"Authorization": basic_auth(people["bridge"].login, people["bridge"].app_password)}
    async with aiohttp.ClientSession(headers=auth) as s:
        async def core(method, route, body=None):
            async with s.request(method, site.url + "/", params={"rest_route": route}, json=body) as resp:
                return resp.status, await resp.json()

        for body in ({"email": "attacker@example.com"}, {"password": "Pwned-pass-123456"}, {"roles": ["subscriber"]}):
            status, answer = await core("POST", f"/wp/v2/users/{boss.id}", body)
            assert status in (401, 403), (body, status, answer)
        status, answer = await core("DELETE", f"/wp/v2/users/{boss.id}", {"force": True, "reassign": 1})
        assert status in (401, 403), answer
        status, answer = await core("POST", f"/wp/v2/users/{boss.id}/application-passwords", {"name": "mine now"})
        assert status == 403, answer
        for roles in (["administrator"], ["editor"]):
            status, answer = await core("POST", f"/wp/v2/users/{customer.id}", {"roles": roles})
            assert status in (400, 403), (roles, status, answer)
            status, answer = await core("POST", "/wp/v2/users", {"username": unique_email("c").split("@")[0],
                                                                  "email": unique_email("core"), "password": "Pw-12345678x",
                                                                  "roles": roles})
            assert status in (400, 403), (roles, status, answer)
        status, answer = await core("POST", f"/wp/v2/users/{customer.id}", {"first_name": "Allowed"})
        assert status == 200, answer  # an ordinary user stays editable
    assert site.user_state(boss.id) == before[boss.id]
    assert site.roles_of(customer.id) == ["customer"]
