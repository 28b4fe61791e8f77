"""The planner: what one run does for a job and the jobs coalesced into it, from recorded-shape
samples (tests/samples). Coalescing merges effects, never only the newest payload."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from bridge.core.delivery import parse_delivery
from bridge.core.plan import effective_action, plan_upsert
from bridge.settings import ConnectionSettings, WordPressSettings

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
JSON = "application/json"
ROLES = {"subscriber": "Subscriber", "customer": "Customer", "editor": "Editor", "administrator": "Administrator"}
GENERIC_CONNECTOR = {
    "contact_id_paths": ["contact.id"], "email_paths": ["contact.email"], "record_path": "contact",
    "fields": {"email": "user_email", "fields.first": "first_name", "fields.last": "last_name",
               "fields.plan": "meta.plan"},
    "tags_path": "tags", "meta_prefix": "gen",
}
GENERIC = ConnectionSettings(crm="generic", connector=GENERIC_CONNECTOR, fetch_contact=False)
WP = WordPressSettings(allowed_roles=["subscriber", "customer"])


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def delivery(body: dict, action: str | None = None, conn: ConnectionSettings = GENERIC, **query: str):
    q = {"wpf_action": action, **query} if action else dict(query)
    overrides = frozenset(k for k in ("role",) if k in q)
    return parse_delivery("g", conn.spec(), q, JSON, json.dumps(body).encode(), overrides)


def plan(deliveries, *, record=None, fetched=False, conn=GENERIC, wp=WP, password="Generated-pw-1"):
    return plan_upsert(deliveries, record, fetched, conn.spec(), conn, wp, ROLES, password, 123)


def generic_event(**changes) -> dict:
    body = sample("generic/contact_event.json")
    body["contact"].update(changes)
    return body


def test_update_tags_then_update_keeps_the_tag_change():
    """A tags-only delivery followed by an update whose body has no tags: both changes are applied."""
    tagged = delivery(generic_event(tags=["vip"]), "update_tags")
    untagged = generic_event(fields={"first": "Newer", "last": "Ric", "plan": "gold"})
    del untagged["contact"]["tags"]
    p = plan([tagged, delivery(untagged, "update")])
    assert p.upsert["tags"] == ["vip"] and p.upsert["first_name"] == "Newer"
    assert p.action == "update" and p.upsert["create"] is False


def test_an_update_tags_delivery_contributes_tags_only():
    """update then update_tags: the fields are the update's, the tags the newer tags delivery's."""
    first = delivery(generic_event(fields={"first": "Kept", "plan": "gold"}, tags=["old"]), "update")
    tags = delivery(generic_event(fields={"first": "Ignored"}, tags=["new"]), "update_tags")
    p = plan([first, tags])
    assert (p.upsert["first_name"], p.upsert["tags"], p.upsert["meta"]) == ("Kept", ["new"], {"plan": "gold"})


def test_each_field_comes_from_the_newest_delivery_that_carries_it():
    """A newer delivery without a field does not erase an older one's value."""
    older = delivery(generic_event(fields={"first": "A", "last": "Old", "plan": "gold"}), "update")
    newer = delivery(generic_event(fields={"last": "New"}), "update")
    p = plan([older, newer])
    assert (p.upsert["first_name"], p.upsert["last_name"], p.upsert["meta"]) == ("A", "New", {"plan": "gold"})


def test_an_add_among_merged_updates_keeps_create_and_the_welcome_mail():
    """update, add(send_notification), update: the run creates, sends the mail, applies the newest fields."""
    deliveries = [delivery(generic_event(), "update"),
                  delivery(generic_event(fields={"first": "Mid"}), "add", send_notification="true"),
                  delivery(generic_event(fields={"first": "Last"}), "update")]
    p = plan(deliveries)
    assert effective_action([d.action for d in deliveries]) == "add" and p.creating
    assert (p.upsert["create"], p.upsert["send_notification"], p.upsert["first_name"]) == (True, True, "Last")
    assert p.upsert["login"] == "gene@example.com"


def test_a_fetched_record_is_the_only_source_and_an_unknown_contact_plans_nothing():
    """When the connection fetches, the CRM record decides every field; None means not in the CRM."""
    conn = ConnectionSettings(crm="generic", base_url="https://crm.example", connector={
        **GENERIC_CONNECTOR, "fetch": {"path": "/contacts/{{contact_id}}", "response_path": "contact"}})
    claims = delivery(generic_event(fields={"first": "Mallory"}), "add", conn)
    record = {"email": "gene@example.com", "fields": {"first": "Gene"}, "tags": ["crm"]}
    p = plan([claims], record=record, fetched=True, conn=conn)
    assert (p.upsert["first_name"], p.upsert["tags"]) == ("Gene", ["crm"])
    nothing = plan([claims], record=None, fetched=True, conn=conn)
    assert nothing.outcome == "not_in_crm" and nothing.upsert == {}


def test_the_newest_role_asked_for_applies_and_an_unlisted_one_falls_back():
    """role from the newest delivery that asks for one; a role outside allowed_roles gives the default role."""
    p = plan([delivery(generic_event(), "update", role="customer"), delivery(generic_event(), "update")])
    assert p.upsert["role"] == "customer" and not p.warnings
    p = plan([delivery(generic_event(), "update", role="editor")])
    assert p.upsert["role"] == "subscriber" and "allowed_roles" in p.warnings[0]


def test_a_crm_password_is_used_and_never_written_back():
    """Customerly's user_pass attribute is the password; only a generated one goes back to the CRM."""
    conn = ConnectionSettings(crm="customerly", secrets={"token": "t-0123456789"}, return_password_field="wp_password",
                              fetch_contact=False)
    body = sample("customerly/details_updated.json")
    p = plan([delivery(body, "add", conn)], conn=conn)
    assert p.upsert["password"] == body["data"]["user"]["data"]["attributes"]["user_pass"]
    assert not p.password_generated and "wp_password" not in p.write_back
    del body["data"]["user"]["data"]["attributes"]["user_pass"]
    p = plan([delivery(body, "add", conn)], conn=conn)
    assert p.password_generated and p.keep_password and p.write_back == {"wp_password": "password"}


def test_a_create_without_a_password_anyone_will_know_sends_none():
    """No CRM user_pass and no write-back: no password is sent (the plugin stores an unusable one);
    with return_password_field the generated one is sent and kept; an update never sends one."""
    p = plan([delivery(generic_event(), "add")])
    assert p.creating and p.unusable_password and "password" not in p.upsert and not p.write_back
    conn = ConnectionSettings(crm="generic", connector=GENERIC_CONNECTOR, fetch_contact=False,
                              return_password_field="wp_password")
    p = plan([delivery(generic_event(), "add", conn)], conn=conn)
    assert p.upsert["password"] == "Generated-pw-1" and p.keep_password and not p.unusable_password
    p = plan([delivery(generic_event(), "update")])
    assert not p.creating and not p.unusable_password and "password" not in p.upsert


def test_tags_only_deliveries_never_create_and_touch_nothing_else():
    """update_tags alone: no create, no role, no names, only tags and the contact link."""
    p = plan([delivery(generic_event(tags=["a"]), "update_tags"), delivery(generic_event(tags=["b"]), "update_tags")])
    assert p.upsert["create"] is False and p.upsert["tags"] == ["b"]
    assert not {"role", "first_name", "meta", "password"} & set(p.upsert)


def test_rownd_insert_then_visibility_update_skips_what_the_newest_hid():
    """Rownd's seed payloads: insert then visibility_update plans one create with the newest redactions."""
    rownd = ConnectionSettings(crm="rownd", secrets={"app_key": "k-0123456789", "app_secret": "s-0123456789",
                                                    "app_id": "app1"},
                               fields={"country": "meta.country"})
    insert = sample("rownd/data_insert.json")
    insert["data"]["country"] = "NZ"
    hidden = copy.deepcopy(sample("rownd/visibility_update.json"))
    p = plan([delivery(insert, conn=rownd), delivery(hidden, conn=rownd)], conn=rownd)
    assert p.creating and p.upsert["meta"] == {"country": "NZ"}
    assert p.redacted == ["country"]


def test_no_email_anywhere_is_an_error_the_executor_raises():
    """Without an email in the deliveries the plan carries an error instead of calls."""
    body = {"contact": {"id": "c-9"}}
    p = plan([delivery(body, "update")])
    assert p.error and "no email" in p.error and p.upsert == {}
