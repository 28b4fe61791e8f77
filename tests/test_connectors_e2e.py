"""Each CRM end to end against the real WordPress and a fake CRM that follows the documented API:
User.com (new user → get user by ID), Rownd (insert, visibility_update, delete policies), a
generic connector described only in configuration, and the password write-back under 429s."""

from __future__ import annotations

import io
import json
import sqlite3

import pytest

from bridge import webhooks as wh
from bridge.logs import configure
from bridge.settings import load_settings
from bridge.store.db import connect, migrate
from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress

GENERIC = {
    "crm": "generic",
    "secrets": {"key": "gen-key"},
    "return_password_field": "wp_password",
    "connector": {
        "headers": {"X-Api-Key": "{{secrets.key}}"},
        "contact_id_paths": ["contact.id"],
        "email_paths": ["contact.email"],
        "record_path": "contact",
        "fields": {"email": "user_email", "fields.first": "first_name", "fields.last": "last_name",
                   "fields.plan": "meta.plan"},
        "tags_path": "tags",
        "meta_prefix": "gen",
        "fetch": {"method": "GET", "path": "/contacts/{{contact_id}}", "response_path": "contact"},
        "write_back": {"method": "PATCH", "path": "/contacts/{{contact_id}}", "json_body": {"fields": "{{attributes}}"}},
        "webhook_create": {"method": "POST", "path": "/webhooks", "json_body": {"url": "{{webhook_url}}", "events": ["contact.updated"]},
                           "response_path": "id"},
        "webhook_delete": {"method": "DELETE", "path": "/webhooks/{{webhook_id}}"},
        "webhook_list": {"method": "GET", "path": "/webhooks", "response_path": "webhooks"},
    },
}


def connections(fake_crm, **policies):
    rownd = {"crm": "rownd", "base_url": fake_crm.rownd_base,
             "secrets": {"app_key": "rownd-key", "app_secret": "rownd-secret", "app_id": "app1"}, **policies}
    return {
        "customerly": {"crm": "customerly", "base_url": fake_crm.customerly_base, "secrets": {"token": "cly-test-token"},
                       "return_password_field": "wp_password"},
        "usercom": {"crm": "usercom", "base_url": fake_crm.usercom_base, "secrets": {"token": "uc-test-key"},
                    "return_password_field": "wp_password", "return_fields": {"user_id": "wp_user_id"}},
        "rownd": rownd,
        "generic": {**GENERIC, "base_url": fake_crm.generic_base},
    }


@pytest.fixture
async def bridge(tmp_path, wp_stack, fake_crm, start_bridge):
    return await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, connections=connections(fake_crm)))


async def test_usercom_new_user_is_fetched_by_id_and_password_written_back(bridge, wp_stack, fake_crm):
    """User.com: the automation posts user.id; the bridge GETs users/{id}/ and writes back via set_multiple_attributes."""
    email = unique_email("uc")
    user = fake_crm.add_usercom_user(email=email, first_name="Una", last_name="Com", tags=["lead", "paid"],
                                     attributes={"city": "Kraków"})
    status, answer = await bridge.send({"user": {"id": user["id"]}, "extra": {"source": "automation"}}, path="/hooks/usercom")
    assert status == 202
    job = await bridge.wait_job(answer["job_id"])
    assert job["status"] == "done" and job["outcome"]["outcome"] == "created", job

    wp = WordPressProbe(wp_stack)
    [wp_user] = await wp.users_with_email(email)
    assert (wp_user["first_name"], wp_user["last_name"]) == ("Una", "Com")
    assert wp.meta(wp_user["id"], "usercom_tags") == ["lead", "paid"]
    assert wp.meta(wp_user["id"], "usercom_contact_id") == str(user["id"])

    reqs = [r for r in fake_crm.requests_to("usercom") if f"/users/{user['id']}/" in r.path]
    get = [r for r in reqs if r.method == "GET"]
    assert get and get[0].path == f"/usercom/api/public/users/{user['id']}/"
    assert get[0].headers.get("authorization") == "Token uc-test-key"
    assert get[0].headers.get("accept") == "*/*; version=2"
    [write] = [r for r in reqs if r.method == "POST"]
    assert write.path == f"/usercom/api/public/users/{user['id']}/set_multiple_attributes/"
    assert set(write.json) == {"wp_password", "wp_user_id"} and write.json["wp_user_id"] == wp_user["id"]
    assert await wp.can_log_in(wp_user["username"], write.json["wp_password"])


async def test_rownd_insert_then_visibility_update_never_writes_redacted(bridge, wp_stack):
    """Rownd: data_insert creates; visibility_update changes visible fields but leaves a redacted one as it is."""
    email, uid = unique_email("rownd"), "0e223bd4-" + unique_email("x")[2:12]
    insert = {"data": {"email": email, "first_name": "Juliet", "last_name": "Rose", "user_id": uid}, "redacted": [],
              "meta": {"operation": "data_insert", "lookup_values": [{"field": "email", "value": email}]}}
    status, a1 = await bridge.send(insert, path="/hooks/rownd", method="PUT")
    assert status == 202 and (await bridge.wait_job(a1["job_id"]))["outcome"]["outcome"] == "created"
    hidden = {"data": {"email": email, "first_name": "Jules", "last_name": "<<REDACTED>>", "user_id": uid},
              "redacted": ["last_name"],
              "meta": {"operation": "visibility_update", "lookup_values": [{"field": "email", "value": email}]}}
    status, a2 = await bridge.send(hidden, path="/hooks/rownd", method="PATCH")
    job = await bridge.wait_job(a2["job_id"])
    assert job["outcome"]["outcome"] == "updated" and job["outcome"]["redacted"] == ["last_name"], job
    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(email)
    assert (user["first_name"], user["last_name"]) == ("Jules", "Rose")


@pytest.mark.parametrize("policy", ["ignore", "remove_roles"])
async def test_rownd_delete_follows_the_policy(policy, tmp_path, wp_stack, fake_crm, start_bridge):
    """Rownd delete: ignore leaves the user as is; remove_roles takes every role away."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, connections=connections(fake_crm, delete_policy=policy)))
    email, uid = unique_email("del"), "u-" + unique_email("x")[2:12]
    insert = {"data": {"email": email, "user_id": uid}, "redacted": [],
              "meta": {"operation": "data_insert", "lookup_values": [{"field": "email", "value": email}]}}
    _, a1 = await b.send(insert, path="/hooks/rownd")
    await b.wait_job(a1["job_id"])
    delete = {"data": {"user_id": uid}, "meta": {"operation": "delete", "lookup_values": [{"field": "email", "value": email}]}}
    _, a2 = await b.send(delete, path="/hooks/rownd", method="GET")
    job = await b.wait_job(a2["job_id"])
    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(email)
    roles = (await wp.user(user["id"]))["roles"]
    if policy == "ignore":
        assert job["outcome"]["outcome"] == "ignored" and roles == ["subscriber"]
    else:
        assert job["outcome"]["outcome"] == "roles_removed" and roles == []


async def test_rownd_delete_policy_delete_reassigns(tmp_path, wp_stack, fake_crm, start_bridge):
    """delete_policy=delete removes the WordPress user (content to reassign_to); repeating it finds no user."""
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm,
                                         connections=connections(fake_crm, delete_policy="delete", reassign_to=1)))
    email, uid = unique_email("gone"), "u-" + unique_email("x")[2:12]
    insert = {"data": {"email": email, "user_id": uid}, "redacted": [],
              "meta": {"operation": "data_insert", "lookup_values": [{"field": "email", "value": email}]}}
    _, a1 = await b.send(insert, path="/hooks/rownd")
    await b.wait_job(a1["job_id"])
    delete = {"data": {"user_id": uid}, "meta": {"operation": "delete", "lookup_values": [{"field": "email", "value": email}]}}
    _, a2 = await b.send(delete, path="/hooks/rownd")
    assert (await b.wait_job(a2["job_id"]))["outcome"]["outcome"] == "deleted"
    assert WordPressProbe(wp_stack).user_count(email) == 0


async def test_generic_connector_from_configuration_only(bridge, wp_stack, fake_crm):
    """A CRM described only in the test's configuration: fetch, map fields/meta/tags, write back."""
    email = unique_email("gen")
    cid = "c-" + email[4:14]
    fake_crm.add_generic_contact(cid, {"email": email, "fields": {"first": "Gene", "last": "Ric", "plan": "gold"}, "tags": ["t1"]})
    status, answer = await bridge.send({"event": "contact.updated", "contact": {"id": cid}}, path="/hooks/generic", wpf_action="add")
    assert status == 202
    job = await bridge.wait_job(answer["job_id"])
    assert job["outcome"]["outcome"] == "created", job
    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(email)
    assert (user["first_name"], user["last_name"]) == ("Gene", "Ric")
    assert wp.meta(user["id"], "plan") == "gold"
    assert wp.meta(user["id"], "gen_tags") == ["t1"]
    gets = [r for r in fake_crm.requests_to("generic") if r.method == "GET" and r.path == f"/generic/contacts/{cid}"]
    assert gets and gets[0].headers.get("x-api-key") == "gen-key"
    [patch] = [r for r in fake_crm.requests_to("generic") if r.method == "PATCH" and r.path == f"/generic/contacts/{cid}"]
    assert set(patch.json["fields"]) == {"wp_password"}


async def test_write_back_meets_429_twice_then_succeeds_once(tmp_path, wp_stack, fake_crm, start_bridge):
    """Two 429s with Retry-After, then success: the password is written once, erased from the DB, absent from logs."""
    log = io.StringIO()
    configure("debug", "json", stream=log)
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm))
    email = unique_email("limited")
    fake_crm.add_customerly_user(email, attributes={"first_name": "Lim"})
    fake_crm.fail("/customerly/v1/users", status=429, times=2, method="POST", retry_after_s=1)
    _, answer = await b.send(customerly_delivery(email), wpf_action="add")
    job = await b.wait_job(answer["job_id"], timeout_s=60)
    assert job["status"] == "done" and job["outcome"]["written_back"] == ["wp_password"], job
    posts = [r for r in fake_crm.requests_to("customerly") if r.method == "POST" and email in json.dumps(r.json or {})]
    assert len(posts) == 3  # two answered 429 by the injected failure, one written
    password = posts[-1].json["users"][0]["attributes"]["wp_password"]
    assert fake_crm.customerly_user(email)["attributes"]["wp_password"] == password
    raw = sqlite3.connect(tmp_path / "bridge.db")
    assert raw.execute("SELECT secret FROM jobs WHERE id = ?", (answer["job_id"],)).fetchone() == (None,)
    dump = "\n".join(raw.iterdump())
    assert password not in dump
    text = log.getvalue()
    assert "http.retry" in text and password not in text
    configure("info", "console")


async def test_customerly_bad_token_is_a_clear_permanent_failure(tmp_path, wp_stack, fake_crm, start_bridge):
    """Customerly's HTTP 500 'Access token not found' is an auth failure: dead at once, reason recorded."""
    conns = connections(fake_crm)
    conns["customerly"]["secrets"] = {"token": "wrong-token-value"}
    b = await start_bridge(bridge_config(tmp_path, wp_stack, fake_crm, connections=conns))
    _, answer = await b.send(customerly_delivery(unique_email("badtoken")), wpf_action="add")
    job = await b.wait_job(answer["job_id"])
    assert job["status"] == "dead" and job["attempts"] == 1
    assert "AuthFailed" in job["last_error"] and "Access token not found" in job["last_error"]
    assert "wrong-token-value" not in job["last_error"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_webhook_register_is_idempotent_and_unregister_uses_the_stored_id(tmp_path, wp_stack, fake_crm,
                                                                               backend, request):
    """register creates one subscription even when run twice; unregister deletes it by its stored ID
    (the subscription kept in either store)."""
    settings = load_settings(None, **bridge_config(tmp_path, wp_stack, fake_crm, connections=connections(fake_crm)))
    if backend == "postgresql":
        from bridge.store import pgdb

        conn = pgdb.connect(request.getfixturevalue("pg_url"))
        pgdb.migrate(conn)
    else:
        conn = connect(tmp_path / "hooks.db")
        migrate(conn)
    url = wh.hook_url(settings, "generic", "https://bridge.example.com")
    before = len(fake_crm.webhooks)
    first_id, created = await wh.register(conn, settings, "generic", url)
    again_id, created_again = await wh.register(conn, settings, "generic", url)
    assert created and not created_again and first_id == again_id
    assert len(fake_crm.webhooks) == before + 1
    assert fake_crm.webhooks[first_id]["url"] == url
    removed = await wh.unregister(conn, settings, "generic")
    assert removed == first_id and first_id not in fake_crm.webhooks
    deletes = [r for r in fake_crm.requests_to("generic") if r.method == "DELETE"]
    assert deletes[-1].path == f"/generic/webhooks/{first_id}"
    assert await wh.unregister(conn, settings, "generic") is None
