"""Privileged users are never modified through the plugin (WPSB_Privilege), whoever calls it and over
either transport: an administrator, an editor (unfiltered_html), a shop-manager-like user, a user
granted promote_users directly, and a list_users-only user on its own account keep email, login,
password, roles, meta, tags and contact-ID link; upsert answers skipped_privileged, delete and
remove_roles skip them. Checked in the database. An operator may opt in a non-administrator role;
administrators and manage_options holders never."""

from __future__ import annotations

import uuid

import pytest

from bridge.clients.wordpress import UpsertRequest
from tests.plugin_actors import CONTACT_KEY, TAGS_KEY, client_for, make_site, role, runtime_grant

pytestmark = pytest.mark.wordpress

MANAGED_OPTION = "wpsb_managed_privileged_roles"


@pytest.fixture(scope="module")
def site(wp_stack):
    return make_site(wp_stack)


@pytest.fixture(scope="module")
def people(site):
    lister, bridge = site.new_users([("lister", role("lister"), {"app_password": True}),
                                     ("bridge", "wpsb_bridge", {"app_password": True})])
    return {"lister": lister, "bridge": bridge}


@pytest.fixture(scope="module")
def victims(site, people):
    """Privileged users, each with a contact ID linked by an earlier sync, meta and tags."""
    boss, editor, shop, direct = site.new_users([("boss", "administrator", {}), ("editor", "editor", {}),
                                                 ("shop", role("shop"), {}),
                                                 ("direct", "subscriber", {"caps": ("promote_users",)})])
    return {"administrator": boss, "editor": editor, "shop manager": shop, "direct promote_users": direct,
            "list_users-only (itself)": people["lister"]}


def takeover_attempts(victim):
    """Every way a caller could try to change the victim through upsert, in order."""
    tag = uuid.uuid4().hex[:8]
    evil, attacker = f"evil-{tag}", f"attacker-{tag}@example.com"
    link = {"contact_id_key": CONTACT_KEY}
    return [
        ("link a new contact ID", UpsertRequest(email=victim.email, contact_id=evil, **link)),
        ("then move the email", UpsertRequest(email=attacker, contact_id=evil, create=False, **link)),
        ("email through the existing link", UpsertRequest(email=attacker, contact_id=victim.contact_id, **link)),
        ("password", UpsertRequest(email=victim.email, password="Pwned-pass-123456", set_password=True)),
        ("role", UpsertRequest(email=victim.email, role="subscriber")),
        ("meta", UpsertRequest(email=victim.email, meta={"city": "pwned"})),
        ("tags", UpsertRequest(email=victim.email, tags=["pwned"], tags_key=TAGS_KEY)),
        ("names", UpsertRequest(email=victim.email, first_name="Pwned", display_name="Pwned")),
        ("login", UpsertRequest(email=victim.email, login="pwned")),
        ("email in another case", UpsertRequest(email=victim.email.upper(), last_name="Pwned")),
        ("update only", UpsertRequest(email=victim.email, first_name="Pwned", create=False)),
    ]


def callers(site, people):
    return {"administrator": site.admin, "bridge role": people["bridge"], "list_users-only": people["lister"]}


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
@pytest.mark.parametrize("caller", ["administrator", "bridge role", "list_users-only"])
async def test_privileged_users_are_never_modified(site, people, victims, caller, transport):
    """Each takeover attempt on each privileged user is skipped_privileged (or finds nobody); the database is unchanged."""
    if caller != "bridge role":  # every victim for the bridge; two for the others, to keep the run short
        victims = {name: v for name, v in victims.items() if name in ("administrator", "list_users-only (itself)")}
    before = {name: site.user_state(v.id) for name, v in victims.items()}
    async with client_for(site, callers(site, people)[caller], transport) as wp:
        for name, victim in victims.items():
            for what, request in takeover_attempts(victim):
                result = await wp.upsert(request)
                if what == "then move the email":
                    assert result.outcome == "no_user", (name, what, result)  # the link was never made
                    continue
                assert result.outcome == "skipped_privileged", (name, what, result)
                assert result.user_id == victim.id and result.changed == [] and not result.created
                assert result.warnings and "never modifies" in result.warnings[0]
            for policy in ("remove_roles", "delete"):
                answer = await wp.delete({"email": victim.email, "policy": policy, "reassign_to": 1})
                assert answer["outcome"] == "skipped_privileged" and answer["user_id"] == victim.id, (name, policy, answer)
                answer = await wp.delete({"contact_id": victim.contact_id, "contact_id_key": CONTACT_KEY, "policy": policy,
                                          "reassign_to": 1})
                assert answer["outcome"] == "skipped_privileged", (name, policy, answer)
    for name, victim in victims.items():
        assert site.user_state(victim.id) == before[name], f"{name} changed"


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_an_opted_in_role_is_managed_but_never_administrators(site, people, transport):
    """With the shop role in wpsb_managed_privileged_roles, such a user is updated; administrator and a
    manage_options role listed there stay protected, and the opt-in ends when the option goes."""
    shop, boss, manager = site.new_users([("optin", role("shop"), {}), ("optboss", "administrator", {}),
                                          ("optmgr", role("manager"), {})])
    site.setup([{"op": "option", "name": MANAGED_OPTION, "value": [role("shop"), "administrator", role("manager")]}])
    try:
        async with client_for(site, people["bridge"], transport) as wp:
            status = await wp.status()
            assert status["policy"]["managed_privileged_roles"] == [role("shop")]
            result = await wp.upsert(UpsertRequest(email=shop.email, first_name="Managed"))
            assert result.outcome == "updated" and result.changed == ["first_name"], result
            for protected in (boss, manager):
                before = site.user_state(protected.id)
                result = await wp.upsert(UpsertRequest(email=protected.email, first_name="Managed"))
                assert result.outcome == "skipped_privileged", result
                assert site.user_state(protected.id) == before
    finally:
        site.setup([{"op": "option", "name": MANAGED_OPTION, "value": None}])
    async with client_for(site, people["bridge"], transport) as wp:
        result = await wp.upsert(UpsertRequest(email=shop.email, first_name="Again"))
    assert result.outcome == "skipped_privileged"


async def test_a_privileged_user_found_by_contact_id_is_skipped_too(site, people):
    """The contact-ID link of an earlier sync does not open a way in: found by contact ID, still skipped."""
    boss = site.new_user("linked", "administrator")
    before = site.user_state(boss.id)
    async with client_for(site, people["bridge"], "rest") as wp:
        result = await wp.upsert(UpsertRequest(email=f"new-{boss.email}", contact_id=boss.contact_id,
                                               contact_id_key=CONTACT_KEY, first_name="Pwned"))
    assert (result.outcome, result.user_id) == ("skipped_privileged", boss.id)
    assert site.user_state(boss.id) == before
    assert site.users_with_email(f"new-{boss.email}") == []


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_a_new_login_is_never_another_accounts_email(site, people, transport):
    """login = the administrator's email would let the login form pick the new account: a number is appended."""
    boss = site.new_user("loginboss", "administrator")
    async with client_for(site, people["bridge"], transport) as wp:
        result = await wp.upsert(UpsertRequest(email=f"x{uuid.uuid4().hex[:8]}@example.com", login=boss.email))
    assert result.created and result.login != boss.email and result.login.startswith(boss.email)


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_one_batch_tells_apart_users_whose_capabilities_differ_in_any_way(site, people, transport):
    """In one batch, subscribers are updated and the users beside them that are privileged some other
    way are skipped: a capability granted directly, a privileged role stored as not granted (core
    still lends its capabilities), an editor. The plugin answers the privilege question once per
    kind of user in a batch (WPSB_Privilege::privileged_here); no kind may take another's answer."""
    plain = site.new_users([(f"plain{i}", "subscriber", {}) for i in range(3)])
    direct, lent, editor = site.new_users([
        ("directcap", "subscriber", {"caps": ("promote_users",)}),
        ("lentrole", "subscriber", {"denied_caps": (role("shop"),)}),
        ("batcheditor", "editor", {}),
    ])
    order = [plain[0], direct, plain[1], lent, editor, plain[2]]
    before = {u.id: site.user_state(u.id) for u in (direct, lent, editor)}
    async with client_for(site, people["bridge"], transport) as wp:
        results = await wp.upsert_batch([UpsertRequest(email=u.email, first_name="Batched") for u in order])
    outcomes = {u.id: r.outcome for u, r in zip(order, results)}
    skipped = "skipped_privileged"
    assert outcomes == {plain[0].id: "updated", direct.id: skipped, plain[1].id: "updated",
                        lent.id: skipped, editor.id: skipped, plain[2].id: "updated"}
    for user_id, state in before.items():
        assert site.user_state(user_id) == state


@pytest.mark.parametrize("transport", ["rest", "xmlrpc"])
async def test_a_capability_granted_at_run_time_protects_the_user_in_a_batch_too(site, people, transport):
    """A user_has_cap filter granting edit_users to two of four subscribers: in one batch those two
    are skipped, though their stored capabilities are the same as the others'; once the filter is
    gone, they are updated like the rest."""
    users = site.new_users([(f"granted{i}", "subscriber", {}) for i in range(4)])
    granted = [users[1], users[3]]
    before = {u.id: site.user_state(u.id) for u in granted}
    with runtime_grant(site, granted):
        async with client_for(site, people["bridge"], transport) as wp:
            results = await wp.upsert_batch([UpsertRequest(email=u.email, last_name="Granted")
                                              for u in users])
            single = await wp.upsert(UpsertRequest(email=users[3].email, last_name="Granted"))
    assert [r.outcome for r in results] == ["updated", "skipped_privileged", "updated", "skipped_privileged"]
    assert single.outcome == "skipped_privileged"
    for user_id, state in before.items():
        assert site.user_state(user_id) == state
    async with client_for(site, people["bridge"], transport) as wp:
        results = await wp.upsert_batch([UpsertRequest(email=u.email, last_name="Granted") for u in users])
    assert [r.outcome for r in results] == ["unchanged", "updated", "unchanged", "updated"]
