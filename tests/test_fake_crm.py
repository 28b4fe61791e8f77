"""The fake CRM server behaves like the documented APIs (shared/reference/crm-apis.md), checked
with a real aiohttp client: auth styles, answer shapes, write-back merging, recording, failure
injection and the Cyclr-style webhook subscriptions."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.fakes.crm import FakeCRM

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parent.parent
CLY = {"Authorization": "Bearer cly-test-token"}
UC = {"Authorization": "Token uc-test-key", "Accept": "*/*; version=2"}
ROWND = {"x-rownd-app-key": "rownd-key", "x-rownd-app-secret": "rownd-secret"}
GEN = {"X-Api-Key": "gen-key"}


@pytest_asyncio.fixture
async def crm() -> AsyncIterator[FakeCRM]:
    fake = FakeCRM()
    await fake.start()
    yield fake
    await fake.stop()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, *, headers: dict[str, str] | None = None,
               body: Any = None, params: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """One request; returns (status, parsed JSON body or None, response headers)."""
    async with http.request(method, url, headers=headers, json=body, params=params) as resp:
        raw = await resp.read()
        return resp.status, (json.loads(raw) if raw else None), resp.headers


# ---- lifecycle -----------------------------------------------------------------------------------

async def test_start_binds_loopback_on_a_free_port_and_exposes_base_urls(crm):
    """start() serves on 127.0.0.1 with an OS-chosen port; the base URLs hang off .url."""
    assert crm.url.startswith("http://127.0.0.1:") and crm.port > 0
    assert crm.customerly_base == f"{crm.url}/customerly/v1"
    assert crm.usercom_base == f"{crm.url}/usercom/api/public"
    assert (crm.rownd_base, crm.generic_base) == (f"{crm.url}/rownd", f"{crm.url}/generic")


async def test_two_fakes_run_side_by_side_with_separate_state(http):
    """Each FakeCRM has its own port and its own users (async with works too)."""
    async with FakeCRM() as a, FakeCRM() as b:
        a.add_customerly_user("only-a@example.com")
        assert a.port != b.port
        status_a, _, _ = await call(http, "GET", f"{a.customerly_base}/users", headers=CLY, params={"email": "only-a@example.com"})
        status_b, _, _ = await call(http, "GET", f"{b.customerly_base}/users", headers=CLY, params={"email": "only-a@example.com"})
        assert (status_a, status_b) == (200, 404)


# ---- Customerly ----------------------------------------------------------------------------------

async def test_customerly_fetch_by_email_answers_the_user_object_under_data(crm, http):
    """GET /users?email= answers 200 {"data": USER} with every documented user field."""
    crm.add_customerly_user("Ada@Example.com", name="Ada Lovelace", user_id="42",
                            attributes={"first_name": "Ada"}, tags=["vip"])
    status, body, _ = await call(http, "GET", f"{crm.customerly_base}/users", headers=CLY, params={"email": "ada@example.com"})
    assert status == 200
    user = body["data"]
    assert set(user) >= {"crmhero_user_id", "app_id", "user_id", "email", "name", "attributes", "tags", "is_user", "last_update"}
    assert (user["email"], user["name"], user["user_id"]) == ("Ada@Example.com", "Ada Lovelace", "42")
    assert user["attributes"] == {"first_name": "Ada"} and user["tags"] == ["vip"]


async def test_customerly_accepts_the_legacy_authentication_accesstoken_header(crm, http):
    """The older "Authentication: AccessToken: TOKEN" header (WP Fusion) is accepted like Bearer."""
    crm.add_customerly_user("legacy@example.com")
    status, body, _ = await call(http, "GET", f"{crm.customerly_base}/users",
                                 headers={"Authentication": "AccessToken: cly-test-token"}, params={"email": "legacy@example.com"})
    assert status == 200 and body["data"]["email"] == "legacy@example.com"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authentication": "AccessToken: wrong"}],
                         ids=["missing", "bad-bearer", "bad-accesstoken"])
async def test_customerly_bad_or_missing_token_is_http_500_access_token_not_found(crm, http, headers):
    """A missing or wrong token answers HTTP 500 {"error":{"message":"Access token not found.","code":0}}, on read and write."""
    crm.add_customerly_user("x@example.com")
    get = await call(http, "GET", f"{crm.customerly_base}/users", headers=headers, params={"email": "x@example.com"})
    post = await call(http, "POST", f"{crm.customerly_base}/users", headers=headers, body={"users": [{"email": "x@example.com"}]})
    for status, body, _ in (get, post):
        assert status == 500
        assert body == {"error": {"message": "Access token not found.", "code": 0}}
    assert crm.customerly_user("x@example.com")["attributes"] == {}


async def test_customerly_unknown_email_answers_user_doesnt_exist(crm, http):
    """An unknown email answers 404 (assumed status) with error.message "User doesn't exist"."""
    status, body, _ = await call(http, "GET", f"{crm.customerly_base}/users", headers=CLY, params={"email": "nobody@example.com"})
    assert status == 404 and body["error"]["message"] == "User doesn't exist"


async def test_customerly_post_users_merges_attributes_adds_tags_and_creates_unknown_users(crm, http):
    """POST /users upserts by email: attributes merged, tags added, new emails created, bad entries in not_added."""
    crm.add_customerly_user("grace@example.com", name="Grace", attributes={"first_name": "Grace", "plan": "free"}, tags=["a"])
    before = crm.customerly_user("grace@example.com")["crmhero_user_id"]
    users = [{"email": "GRACE@example.com", "attributes": {"plan": "pro", "wp_password": "s3cret"}, "tags": ["b", "a"]},
             {"email": "new@example.com", "name": "New Person", "user_id": "7", "attributes": {"x": 1}},
             {"name": "no email"}]
    status, body, _ = await call(http, "POST", f"{crm.customerly_base}/users", headers=CLY, body={"users": users})
    assert status == 200
    assert body == {"data": {"inserted": 2, "not_added": [{"name": "no email"}]}}
    grace = crm.customerly_user("grace@example.com")
    assert grace["attributes"] == {"first_name": "Grace", "plan": "pro", "wp_password": "s3cret"}
    assert grace["tags"] == ["a", "b"] and grace["name"] == "Grace" and grace["crmhero_user_id"] == before
    new = crm.customerly_user("new@example.com")
    assert (new["name"], new["user_id"], new["attributes"]) == ("New Person", "7", {"x": 1})


async def test_customerly_post_without_a_users_list_is_a_400_error_object(crm, http):
    """A body that is not {"users": [...]} answers 400 with Customerly's error object, not a crash."""
    status, body, _ = await call(http, "POST", f"{crm.customerly_base}/users", headers=CLY, body={"email": "a@example.com"})
    assert status == 400 and "message" in body["error"]
    async with http.post(f"{crm.customerly_base}/users", headers=CLY, data=b"{not json") as resp:
        assert resp.status == 400 and "message" in (await resp.json())["error"]


async def test_customerly_reseeding_keeps_the_ids_and_replaces_the_given_fields(crm):
    """add_customerly_user on a known email replaces the given fields and keeps crmhero_user_id and the rest."""
    first = crm.add_customerly_user("re@example.com", name="Re", attributes={"a": 1}, tags=["t"])
    again = crm.add_customerly_user("re@example.com", attributes={"b": 2})
    assert again["crmhero_user_id"] == first["crmhero_user_id"]
    assert (again["name"], again["attributes"], again["tags"]) == ("Re", {"b": 2}, ["t"])


# ---- User.com ------------------------------------------------------------------------------------

async def test_usercom_get_user_by_id_has_the_documented_shape(crm, http):
    """GET users/{id}/ answers the user with tags [{id, name}] and attributes [{name_std, value}]."""
    user = crm.add_usercom_user(email="una@example.com", first_name="Una", last_name="Com", tags=["lead", "paid"],
                                attributes={"city": "Kraków"})
    assert isinstance(user["id"], int)
    status, body, _ = await call(http, "GET", f"{crm.usercom_base}/users/{user['id']}/", headers=UC)
    assert status == 200
    assert {k: body[k] for k in ("id", "email", "first_name", "last_name", "name")} == \
        {"id": user["id"], "email": "una@example.com", "first_name": "Una", "last_name": "Com", "name": "Una Com"}
    assert "status" in body
    assert [t["name"] for t in body["tags"]] == ["lead", "paid"] and all(isinstance(t["id"], int) for t in body["tags"])
    assert body["attributes"] == [{"name_std": "city", "value": "Kraków"}]
    assert body == crm.usercom_user(user["id"])


async def test_usercom_unknown_user_and_missing_slash_answer_not_found(crm, http):
    """An unknown ID, and a path without the API's trailing slash, answer 404 {"detail": "Not found."}."""
    user = crm.add_usercom_user(email="slash@example.com")
    for path in ("/users/999999/", f"/users/{user['id']}", "/users/abc/"):
        status, body, _ = await call(http, "GET", crm.usercom_base + path, headers=UC)
        assert (status, body) == (404, {"detail": "Not found."}), path


async def test_usercom_search_by_email_answers_one_user(crm, http):
    """GET users/search/?email= answers the single matching user object, or 404."""
    user = crm.add_usercom_user(email="Find.Me@example.com")
    status, body, _ = await call(http, "GET", f"{crm.usercom_base}/users/search/", headers=UC, params={"email": "find.me@example.com"})
    assert status == 200 and body["id"] == user["id"]
    status, body, _ = await call(http, "GET", f"{crm.usercom_base}/users/search/", headers=UC, params={"email": "no@example.com"})
    assert (status, body) == (404, {"detail": "Not found."})


@pytest.mark.parametrize("headers, detail", [({}, "Authentication credentials were not provided."),
                                             ({"Authorization": "Token wrong"}, "Invalid token."),
                                             ({"Authorization": "Bearer uc-test-key"}, "Invalid token.")],
                         ids=["missing", "wrong-key", "wrong-scheme"])
async def test_usercom_token_auth_refusals_are_401_with_detail(crm, http, headers, detail):
    """Anything but "Authorization: Token KEY" answers 401 {"detail": ...} and changes nothing."""
    user = crm.add_usercom_user(email="auth@example.com")
    status, body, _ = await call(http, "GET", f"{crm.usercom_base}/users/{user['id']}/", headers=headers)
    assert (status, body) == (401, {"detail": detail})
    status, _, _ = await call(http, "POST", f"{crm.usercom_base}/users/{user['id']}/set_multiple_attributes/",
                              headers=headers, body={"wp_password": "x"})
    assert status == 401 and crm.usercom_user(user["id"])["attributes"] == []


async def test_usercom_set_multiple_attributes_updates_and_adds(crm, http):
    """POST users/{id}/set_multiple_attributes/ {attr: value} updates known attributes, adds new ones, answers the user."""
    user = crm.add_usercom_user(email="attrs@example.com", attributes={"city": "Kraków", "plan": "free"})
    status, body, _ = await call(http, "POST", f"{crm.usercom_base}/users/{user['id']}/set_multiple_attributes/",
                                 headers=UC, body={"plan": "pro", "wp_password": "pw", "wp_user_id": 12})
    assert status == 200 and body["id"] == user["id"]
    assert {a["name_std"]: a["value"] for a in crm.usercom_user(user["id"])["attributes"]} == \
        {"city": "Kraków", "plan": "pro", "wp_password": "pw", "wp_user_id": 12}
    status, body, _ = await call(http, "POST", f"{crm.usercom_base}/users/{user['id']}/set_multiple_attributes/",
                                 headers=UC, body=["not", "an", "object"])
    assert status == 400 and "detail" in body


async def test_usercom_add_tag_and_remove_tag(crm, http):
    """POST add_tag/ {"name"} adds a tag once; DELETE remove_tag/ {"name"} removes it."""
    user = crm.add_usercom_user(email="tags@example.com", tags=["lead"])
    url = f"{crm.usercom_base}/users/{user['id']}"
    for _ in range(2):
        status, body, _ = await call(http, "POST", f"{url}/add_tag/", headers=UC, body={"name": "paid"})
        assert status == 200
    assert [t["name"] for t in body["tags"]] == ["lead", "paid"]
    status, body, _ = await call(http, "DELETE", f"{url}/remove_tag/", headers=UC, body={"name": "lead"})
    assert status == 200 and [t["name"] for t in crm.usercom_user(user["id"])["tags"]] == ["paid"]
    status, body, _ = await call(http, "POST", f"{url}/add_tag/", headers=UC, body={})
    assert status == 400


# ---- Rownd ---------------------------------------------------------------------------------------

async def test_rownd_fetch_answers_data_rownd_user_verified_data_and_meta(crm, http):
    """GET applications/{app}/users/{user}/data answers {data, rownd_user, verified_data, meta}."""
    crm.add_rownd_user("app1", "u-1", {"email": "jrose@acme.com", "first_name": "Juliet"})
    status, body, _ = await call(http, "GET", f"{crm.rownd_base}/applications/app1/users/u-1/data", headers=ROWND)
    assert status == 200
    assert set(body) == {"data", "rownd_user", "verified_data", "meta"}
    assert body["data"] == {"email": "jrose@acme.com", "first_name": "Juliet", "user_id": "u-1"}
    assert body["rownd_user"] == "u-1" and body["verified_data"] == {}
    status, _, _ = await call(http, "GET", f"{crm.rownd_base}/applications/other-app/users/u-1/data", headers=ROWND)
    assert status == 404


@pytest.mark.parametrize("headers", [{}, {"x-rownd-app-key": "rownd-key"}, {**ROWND, "x-rownd-app-secret": "wrong"}],
                         ids=["none", "no-secret", "wrong-secret"])
async def test_rownd_wrong_app_credentials_are_401_json(crm, http, headers):
    """Without the right x-rownd-app-key and x-rownd-app-secret headers the answer is 401 JSON."""
    crm.add_rownd_user("app1", "u-1", {"email": "a@example.com"})
    for method, body in (("GET", None), ("PATCH", {"data": {"x": 1}})):
        status, answer, _ = await call(http, method, f"{crm.rownd_base}/applications/app1/users/u-1/data",
                                       headers=headers, body=body)
        assert status == 401 and isinstance(answer, dict)
    assert "x" not in crm.rownd_user("app1", "u-1")["data"]


async def test_rownd_patch_merges_fields(crm, http):
    """PATCH with {"data": {...}} merges into the user's fields (and creates missing data); a bad body is 400."""
    crm.add_rownd_user("app1", "u-2", {"email": "m@example.com", "first_name": "M"})
    url = f"{crm.rownd_base}/applications/app1/users/u-2/data"
    status, body, _ = await call(http, "PATCH", url, headers=ROWND, body={"data": {"wp_password": "pw", "first_name": "Em"}})
    assert status == 200
    assert crm.rownd_user("app1", "u-2")["data"] == {"email": "m@example.com", "first_name": "Em", "wp_password": "pw",
                                                     "user_id": "u-2"}
    assert body["data"] == crm.rownd_user("app1", "u-2")["data"]
    status, _, _ = await call(http, "PATCH", url, headers=ROWND, body={"first_name": "no data key"})
    assert status == 400
    status, _, _ = await call(http, "PATCH", f"{crm.rownd_base}/applications/app1/users/u-new/data", headers=ROWND,
                              body={"data": {"a": 1}})
    assert status == 200 and crm.rownd_user("app1", "u-new")["data"] == {"user_id": "u-new", "a": 1}


# ---- Generic -------------------------------------------------------------------------------------

async def test_generic_contact_fetch_and_patch_merge(crm, http):
    """GET contacts/{id} answers {"contact": {id, email, fields, tags}}; PATCH {"fields"} merges; unknown is 404."""
    crm.add_generic_contact("c-42", {"email": "g@example.com", "fields": {"first": "Gene", "plan": "gold"}, "tags": ["t1"]})
    status, body, _ = await call(http, "GET", f"{crm.generic_base}/contacts/c-42", headers=GEN)
    assert (status, body) == (200, {"contact": {"id": "c-42", "email": "g@example.com",
                                                "fields": {"first": "Gene", "plan": "gold"}, "tags": ["t1"]}})
    status, body, _ = await call(http, "PATCH", f"{crm.generic_base}/contacts/c-42", headers=GEN,
                                 body={"fields": {"wp_password": "pw", "plan": "platinum"}})
    assert status == 200
    assert crm.generic_contact("c-42")["fields"] == {"first": "Gene", "plan": "platinum", "wp_password": "pw"}
    for method in ("GET", "PATCH"):
        status, body, _ = await call(http, method, f"{crm.generic_base}/contacts/nope", headers=GEN, body={"fields": {}})
        assert (status, body) == (404, {"error": "not found"})


async def test_generic_contact_seed_accepts_plain_fields(crm):
    """add_generic_contact takes the whole record or just fields: {"first": "Ada"} lands in "fields"."""
    contact = crm.add_generic_contact("c-1", {"first": "Ada", "email": "ada@example.com"})
    assert contact == {"id": "c-1", "email": "ada@example.com", "fields": {"first": "Ada"}, "tags": []}


async def test_generic_requires_the_api_key(crm, http):
    """Without "X-Api-Key: gen-key" every generic endpoint answers 401 {"error": "unauthorized"}."""
    crm.add_generic_contact("c-9", {"fields": {}})
    for method, path in (("GET", "/contacts/c-9"), ("PATCH", "/contacts/c-9"), ("GET", "/webhooks"),
                         ("POST", "/webhooks"), ("DELETE", "/webhooks/1")):
        status, body, _ = await call(http, method, crm.generic_base + path, headers={"X-Api-Key": "wrong"},
                                     body={"url": "http://x", "fields": {}})
        assert (status, body) == (401, {"error": "unauthorized"}), (method, path)
    assert crm.webhooks == {}


async def test_generic_webhooks_create_list_delete_like_cyclr(crm, http):
    """POST /webhooks → 201 {id:int, active, url}; GET lists it; DELETE /webhooks/{id} → 204, then 404."""
    status, created, _ = await call(http, "POST", f"{crm.generic_base}/webhooks", headers=GEN,
                                    body={"url": "https://bridge.example.com/hooks/generic", "events": ["contact.updated"]})
    assert status == 201 and isinstance(created["id"], int) and created["active"] is True
    assert created["url"] == "https://bridge.example.com/hooks/generic"
    assert crm.webhooks[str(created["id"])]["events"] == ["contact.updated"]
    status, listed, _ = await call(http, "GET", f"{crm.generic_base}/webhooks", headers=GEN)
    assert status == 200 and [h["id"] for h in listed["webhooks"]] == [created["id"]]
    status, body, _ = await call(http, "DELETE", f"{crm.generic_base}/webhooks/{created['id']}", headers=GEN)
    assert (status, body) == (204, None) and crm.webhooks == {}
    status, _, _ = await call(http, "DELETE", f"{crm.generic_base}/webhooks/{created['id']}", headers=GEN)
    assert status == 404
    status, _, _ = await call(http, "POST", f"{crm.generic_base}/webhooks", headers=GEN, body={"events": []})
    assert status == 400 and crm.webhooks == {}


# ---- recording, failures, clear ------------------------------------------------------------------

async def test_every_request_is_recorded_with_path_query_headers_body_and_status(crm, http):
    """Recorded keeps crm, method, full path, query, case-insensitive headers, raw body, parsed JSON, answered status."""
    crm.add_customerly_user("rec@example.com")
    await call(http, "GET", f"{crm.customerly_base}/users", headers=CLY, params={"email": "rec@example.com"})
    await call(http, "POST", f"{crm.customerly_base}/users", headers=CLY, body={"users": [{"email": "rec@example.com"}]})
    await call(http, "GET", f"{crm.usercom_base}/users/1/", headers=UC)
    async with http.post(f"{crm.generic_base}/webhooks", headers=GEN, data=b"not json") as resp:
        assert resp.status == 400
    assert [r.crm for r in crm.requests] == ["customerly", "customerly", "usercom", "generic"]
    get, post = crm.requests_to("customerly")
    assert (get.method, get.path, get.query, get.status) == ("GET", "/customerly/v1/users", {"email": "rec@example.com"}, 200)
    assert get.headers["authorization"] == get.headers["Authorization"] == "Bearer cly-test-token"
    assert get.body == b"" and get.json is None
    assert post.json == {"users": [{"email": "rec@example.com"}]} and json.loads(post.body) == post.json
    [uc] = crm.requests_to("usercom")
    assert uc.headers.get("accept") == "*/*; version=2" and uc.status == 404
    [gen] = crm.requests_to("generic")
    assert (gen.body, gen.json, gen.status) == (b"not json", None, 400)
    with pytest.raises(ValueError):
        crm.requests_to("hubspot")


async def test_fail_answers_the_next_matching_requests_with_retry_after_then_recovers(crm, http):
    """fail(prefix, status=429, times=2, method="POST", retry_after_s=1): two 429s with Retry-After, recorded; then normal."""
    crm.add_customerly_user("lim@example.com")
    crm.fail("/customerly/v1/users", status=429, times=2, method="POST", retry_after_s=1)
    status, body, _ = await call(http, "GET", f"{crm.customerly_base}/users", headers=CLY, params={"email": "lim@example.com"})
    assert status == 200  # GET does not match method="POST"
    answers = [await call(http, "POST", f"{crm.customerly_base}/users", headers=CLY,
                          body={"users": [{"email": "lim@example.com", "attributes": {"n": n}}]}) for n in range(3)]
    assert [a[0] for a in answers] == [429, 429, 200]
    assert [a[2].get("Retry-After") for a in answers[:2]] == ["1", "1"]
    assert answers[0][1] == {"error": "injected"}
    assert crm.customerly_user("lim@example.com")["attributes"] == {"n": 2}  # the failed writes changed nothing
    assert [r.status for r in crm.requests_to("customerly")] == [200, 429, 429, 200]


async def test_fail_takes_any_method_custom_body_and_rounds_retry_after_up(crm, http):
    """Without method any request matches; the body is the one given; Retry-After is whole seconds, rounded up."""
    crm.fail("/usercom/", status=503, retry_after_s=0.2, body={"detail": "Service unavailable"})
    status, body, headers = await call(http, "GET", f"{crm.usercom_base}/users/1/", headers=UC)
    assert (status, body, headers.get("Retry-After")) == (503, {"detail": "Service unavailable"}, "1")
    crm.fail("/generic/contacts", status=500, method="get")
    status, body, headers = await call(http, "GET", f"{crm.generic_base}/contacts/c", headers=GEN)
    assert (status, body) == (500, {"error": "injected"}) and "Retry-After" not in headers
    status, _, _ = await call(http, "GET", f"{crm.generic_base}/contacts/c", headers=GEN)
    assert status == 404  # the failure was used up


async def test_injected_failure_wins_over_auth_checks(crm, http):
    """A matching injected failure answers even a request the CRM would refuse for its credentials."""
    crm.fail("/rownd", status=502)
    status, body, _ = await call(http, "GET", f"{crm.rownd_base}/applications/a/users/u/data")
    assert (status, body) == (502, {"error": "injected"})


async def test_clear_forgets_requests_and_failures_but_keeps_users_and_webhooks(crm, http):
    """clear() empties the request log and pending failures; seeded users and webhooks stay."""
    crm.add_customerly_user("keep@example.com")
    await call(http, "POST", f"{crm.generic_base}/webhooks", headers=GEN, body={"url": "http://x", "events": []})
    crm.fail("/customerly", status=500, times=5)
    crm.clear()
    assert crm.requests == []
    status, _, _ = await call(http, "GET", f"{crm.customerly_base}/users", headers=CLY, params={"email": "keep@example.com"})
    assert status == 200 and len(crm.webhooks) == 1 and len(crm.requests) == 1


async def test_unknown_paths_answer_json_404_in_each_crms_style(crm, http):
    """A path no endpoint serves is a JSON 404 in the CRM's own error style, and is recorded."""
    expected = {f"{crm.customerly_base}/leads": {"error": {"message": "Not found", "code": 404}},
                f"{crm.usercom_base}/companies/": {"detail": "Not found."},
                f"{crm.generic_base}/deals/1": {"error": "not found"}}
    for url, body in expected.items():
        assert (await call(http, "GET", url))[:2] == (404, body)
    status, _, _ = await call(http, "GET", f"{crm.url}/elsewhere")
    assert status == 404 and crm.requests[-1].crm == "other"


# ---- standalone ----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_standalone_server_prints_base_urls_and_serves_the_demo_seed(http):
    """python -m tests.fakes.crm --port P --seed-demo prints its base URLs and serves ada/grace/linus on 127.0.0.1."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.fakes.crm", "--port", str(port), "--seed-demo",
                                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        banner = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode() for _ in range(5)]
        assert f"http://127.0.0.1:{port}/customerly/v1" in "".join(banner)
        assert f"http://127.0.0.1:{port}/usercom/api/public" in "".join(banner)
        base = f"http://127.0.0.1:{port}/customerly/v1"
        for email in ("ada@example.com", "grace@example.com", "linus@example.com"):
            status, body, _ = await call(http, "GET", f"{base}/users", headers=CLY, params={"email": email})
            assert status == 200 and body["data"]["attributes"]["first_name"] and body["data"]["tags"]
    finally:
        proc.terminate()
        await proc.wait()


# ---- recorded-shape samples (tests/samples) ------------------------------------------------------

SAMPLES = ROOT / "tests" / "samples"


def _sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


async def test_samples_keep_the_documented_paths():
    """Each sample is JSON with the documented contact paths (Customerly data.user.data.email, User.com user.id, ...)."""
    for name in ("customerly/contact_tagged.json", "customerly/details_updated.json"):
        assert "@" in _sample(name)["data"]["user"]["data"]["email"]
    assert isinstance(_sample("usercom/new_user.json")["user"]["id"], int)
    generic = _sample("generic/contact_event.json")
    assert generic["event"] == "contact.updated" and generic["contact"]["id"] == "c-42"
    for operation in ("data_insert", "data_update", "visibility_update", "delete"):
        rownd = _sample(f"rownd/{operation}.json")
        assert rownd["meta"]["operation"] == operation
        assert rownd["meta"]["lookup_values"] == [{"field": "email", "value": "jrose@acme.com"}]
        assert rownd["data"]["user_id"] == "0e223bd4-1324-49ff-b948-122eeaaa42d1"
    assert _sample("rownd/visibility_update.json")["redacted"] == ["country"]
    assert _sample("rownd/visibility_update.json")["data"]["country"] == "<<REDACTED>>"
    assert set(_sample("rownd/delete.json")["data"]) == {"user_id"}
    listed = (SAMPLES / "README.md").read_text()
    assert all(f"`{p.relative_to(SAMPLES)}`" in listed for p in SAMPLES.rglob("*.json"))
