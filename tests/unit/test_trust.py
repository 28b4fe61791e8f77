"""The bridge's trust model, pure parts: what a delivery may say (query overrides, contact IDs that
reach CRM paths, emails WordPress refuses), the role policy's default, and configuration mistakes
that stop start-up naming the key."""

from __future__ import annotations

import json

import pytest

from bridge.clients.crm import CrmClient
from bridge.core.connector import build_connector
from bridge.core.decide import resolve_role
from bridge.core.delivery import OVERRIDE_PARAMS, parse_delivery
from bridge.core.emails import normalize_email
from bridge.errors import BadDelivery, ConfigError, Permanent
from bridge.settings import ConnectionSettings, WorkerSettings, load_settings

CUSTOMERLY = build_connector("customerly")
GENERIC = build_connector("generic", {"contact_id_paths": ["contact.id"], "email_paths": ["contact.email"]})
JSON = "application/json"
ROLES = {"subscriber": "Subscriber", "editor": "Editor", "customer": "Customer", "administrator": "Administrator"}


def body(email: str = "ada@example.com") -> bytes:
    return json.dumps({"data": {"user": {"data": {"email": email}}}}).encode()


# --- emails as WordPress's is_email() takes them ---------------------------------------------------

@pytest.mark.parametrize("email, why", [
    ("ada\x00@example.com", "control characters"),
    ("ada@exa\x01mple.com", "control characters"),
    ("zoë@example.com", "ASCII"),
    ("a(b)@example.com", "characters WordPress does not allow"),
    ("a@b.c", "shorter than 6"),
    ("ada@localhost", "two labels"),
    ("ada@example..com", "empty labels"),
    ("ada@.example.com", "empty labels"),
    ("ada@-example.com", "inner hyphens"),
    ("ada@exam_ple.com", "inner hyphens"),
    ("@example.com", "local part"),
    ("x" * 95 + "@example.com", "longer than 100"),
])
def test_an_email_wordpress_refuses_is_a_422_naming_the_rule(email, why):
    """Each of is_email()'s rules refuses with a 422 whose message says which rule."""
    with pytest.raises(BadDelivery) as info:
        normalize_email(email)
    assert info.value.status == 422 and info.value.code == "invalid_email"
    assert why in info.value.message


def test_an_idn_domain_becomes_punycode_and_ascii_addresses_are_kept():
    """An internationalised domain is converted (WordPress accepts the punycode form)."""
    assert normalize_email("anna@bücher.example") == "anna@xn--bcher-kva.example"
    assert normalize_email("O'Brien+tag@Example.COM") == "O'Brien+tag@Example.COM"


def test_intake_refuses_an_email_wordpress_would_refuse_before_acknowledging():
    """parse_delivery answers 422 for the body's email, and stores the punycode form otherwise."""
    with pytest.raises(BadDelivery) as info:
        parse_delivery("c", CUSTOMERLY, {"wpf_action": "add"}, JSON, body("zoë@example.com"))
    assert info.value.status == 422
    d = parse_delivery("c", CUSTOMERLY, {"wpf_action": "add"}, JSON, body("anna@bücher.example"))
    assert d.email == "anna@xn--bcher-kva.example"


# --- query overrides are the connection's choice ---------------------------------------------------

@pytest.mark.parametrize("param", OVERRIDE_PARAMS)
def test_a_query_override_the_connection_does_not_take_is_refused(param):
    """email/contact_id/role in the query are refused (400, naming it) unless the connection allows them."""
    query = {"wpf_action": "update", param: "x1@example.com" if param == "email" else "x1"}
    with pytest.raises(BadDelivery) as info:
        parse_delivery("c", CUSTOMERLY, query, JSON, body())
    assert (info.value.status, info.value.code, info.value.field) == (400, "override_not_allowed", param)
    d = parse_delivery("c", CUSTOMERLY, query, JSON, body(), frozenset({param}))
    assert d.action == "update"


def test_a_signed_connection_takes_no_override_whatever_it_lists():
    """The signature covers the body, not the query: a signed connection allows none."""
    signed = ConnectionSettings(crm="customerly", secrets={"token": "t-0123456789"},
                                signing_secrets=["whsec_c2VjcmV0LXNpZ25pbmcta2V5"],
                                query_overrides=["email", "contact_id", "role"])
    assert signed.overrides_allowed() == frozenset()
    assert ConnectionSettings(crm="customerly", secrets={"token": "t-0123456789"}).overrides_allowed() == frozenset({"role"})


# --- contact IDs that reach CRM request paths ------------------------------------------------------

@pytest.mark.parametrize("contact_id", ["..", ".", "a/b", "../admin", "a\\b", "x\x00y", "x\ny", "x\x7f"])
def test_a_contact_id_that_could_move_a_path_segment_is_a_422(contact_id):
    """'.', '..', slashes, backslashes and control characters are refused at intake."""
    raw = json.dumps({"contact": {"id": contact_id, "email": "ada@example.com"}}).encode()
    with pytest.raises(BadDelivery) as info:
        parse_delivery("g", GENERIC, {"wpf_action": "update"}, JSON, raw)
    assert (info.value.status, info.value.code) == (422, "invalid_contact_id")


@pytest.mark.parametrize("contact_id", ["..", ".", " .. "])
def test_a_crm_request_never_carries_a_dot_segment(contact_id):
    """Defence in depth: the CRM client refuses to place '.'/'..' in a path (yarl would normalise
    even %2E%2E into a move up); anything else is percent-encoded, slashes included."""
    conn = ConnectionSettings(crm="generic", base_url="https://crm.example/api",
                              connector={"fetch": {"path": "/contacts/{{contact_id}}"}})
    crm = CrmClient("g", conn, session=None, retry=WorkerSettings())
    with pytest.raises(Permanent):
        crm.build(crm.spec.fetch, {"contact_id": contact_id, "email": ""})
    built = crm.build(crm.spec.fetch, {"contact_id": "a/../b?c#d", "email": ""})
    assert built["url"] == "https://crm.example/api/contacts/a%2F..%2Fb%3Fc%23d"


def test_one_contact_whose_id_is_the_email_is_one_ordering_key_whatever_the_case():
    """Customerly's contact ID is the email: Bob@x and bob@x order as one contact."""
    upper = parse_delivery("c", CUSTOMERLY, {"wpf_action": "update"}, JSON, body("Bob@Example.com"))
    lower = parse_delivery("c", CUSTOMERLY, {"wpf_action": "update"}, JSON, body("bob@example.com"))
    assert upper.contact_key == lower.contact_key == "c:email:bob@example.com"


# --- roles: only what the operator lists -----------------------------------------------------------

def test_allowed_roles_default_to_the_default_role_alone():
    """Without allowed_roles a delivery asking for editor gets the default role, with a warning."""
    wp = load_settings(None).wordpress
    assert wp.granted_roles() == ["subscriber"]
    decision = resolve_role("editor", ROLES, wp.granted_roles(), wp.default_role, creating=True)
    assert decision.role == "subscriber" and "not in allowed_roles" in decision.warning
    listed = load_settings(None, wordpress={"allowed_roles": ["subscriber", "customer"]}).wordpress
    assert resolve_role("Customer", ROLES, listed.granted_roles(), "subscriber", creating=True).role == "customer"


# --- configuration mistakes stop start-up, naming the key ------------------------------------------

FETCHING = {"crm": "generic", "base_url": "https://crm.example", "secrets": {"key": "k-0123456789"}}


@pytest.mark.parametrize("config, key, words", [
    ({"connections": {"g": {**FETCHING, "connector": {"fetch": {"path": "/c/{{ contact-id }}"}}}}},
     "connections.g", "malformed merge field"),
    ({"connections": {"g": {**FETCHING, "connector": {"fetch": {"path": "/c/{{contactid}}"}}}}},
     "connections.g", "unknown merge field {{contactid}}"),
    ({"connections": {"g": {**FETCHING, "connector": {"headers": {"X-Key": "{{secrets.token}}"}}}}},
     "connections.g", "secret the connection does not have"),
    ({"connections": {"g": {**FETCHING, "connector": {"write_back": {"path": "/c/{{webhook_id}}"}}}}},
     "connections.g", "unknown merge field {{webhook_id}}"),
    ({"connections": {"g": {**FETCHING, "base_url": "crm.example/api"}}}, "connections.g.base_url", "http"),
    ({"connections": {"r": {"crm": "rownd", "secrets": {"app_key": "k-0123456789", "app_secret": "s-0123456789"}}}},
     "connections.r", "secrets.app_id"),
    ({"wordpress": {"url": "wp.example.com"}}, "wordpress.url", "http"),
    ({"server": {"public_url": "ftp://bridge.example"}}, "server.public_url", "http"),
    ({"log_level": "verbose"}, "log_level", "debug"),
    ({"wordpress": {"default_role": "Administrator"}}, "wordpress.default_role", "never"),
])
def test_a_config_mistake_is_refused_naming_the_key(config, key, words):
    """Each mistake is a ConfigError whose key and words say where and what."""
    with pytest.raises(ConfigError) as info:
        load_settings(None, **config)
    assert info.value.key == key and words in info.value.problem, (info.value.key, info.value.problem)


def test_a_database_path_under_a_file_or_at_a_directory_is_refused(tmp_path):
    """A typo'd database path is named at start-up instead of failing later."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path, words in [(afile / "bridge.db", "which is a file"), (tmp_path, "is a directory")]:
        with pytest.raises(ConfigError) as info:
            load_settings(None, database={"path": str(path)})
        assert info.value.key == "database.path" and words in info.value.problem
    assert load_settings(None, log_level=" DEBUG ").log_level == "debug"
