"""One aiohttp server emulating the documented endpoints of Customerly, User.com, Rownd and a
generic CRM (shared/reference/crm-apis.md): same paths, auth headers, shapes and error styles.

Every request is recorded; failures (429 with Retry-After, 5xx, auth errors) can be injected.
Runnable on its own for the demo: ``python -m tests.fakes.crm --port 8799 --seed-demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Recorded:
    """One request as the fake received it. ``headers`` is case-insensitive."""

    crm: str
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict
    body: bytes
    json: Any | None
    status: int = 0


@dataclass
class _Failure:
    path_prefix: str
    status: int
    times: int
    method: str | None
    retry_after_s: float | None
    body: Any


def _json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


class FakeCRM:
    """The fake CRM server; see the module docstring."""

    def __init__(self, *, customerly_token: str = "cly-test-token", usercom_key: str = "uc-test-key",
                 rownd_app_key: str = "rownd-key", rownd_app_secret: str = "rownd-secret", generic_key: str = "gen-key",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.customerly_token = customerly_token
        self.usercom_key = usercom_key
        self.rownd_app_key = rownd_app_key
        self.rownd_app_secret = rownd_app_secret
        self.generic_key = generic_key
        self.host, self.port = host, port
        self.url = ""
        self.requests: list[Recorded] = []
        self._failures: list[_Failure] = []
        self._customerly: dict[str, dict] = {}
        self._usercom: dict[int, dict] = {}
        self._rownd: dict[tuple[str, str], dict] = {}
        self._generic: dict[str, dict] = {}
        self.webhooks: dict[str, dict] = {}
        self._ids = itertools.count(1001)
        self._runner: web.AppRunner | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start serving on 127.0.0.1; sets ``url``."""
        app = web.Application(middlewares=[self._record])
        r = app.router
        r.add_get("/customerly/v1/users", self._cly_get)
        r.add_post("/customerly/v1/users", self._cly_post)
        r.add_get("/usercom/api/public/users/search/", self._uc_search)
        r.add_get("/usercom/api/public/users/{id}/", self._uc_get)
        r.add_post("/usercom/api/public/users/{id}/set_multiple_attributes/", self._uc_set_attrs)
        r.add_post("/usercom/api/public/users/{id}/add_tag/", self._uc_add_tag)
        r.add_delete("/usercom/api/public/users/{id}/remove_tag/", self._uc_remove_tag)
        r.add_get("/rownd/applications/{app}/users/{user}/data", self._rownd_get)
        r.add_patch("/rownd/applications/{app}/users/{user}/data", self._rownd_patch)
        r.add_get("/generic/contacts/{id}", self._gen_get)
        r.add_patch("/generic/contacts/{id}", self._gen_patch)
        r.add_post("/generic/webhooks", self._gen_hook_create)
        r.add_get("/generic/webhooks", self._gen_hook_list)
        r.add_delete("/generic/webhooks/{id}", self._gen_hook_delete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def customerly_base(self) -> str:
        return f"{self.url}/customerly/v1"

    @property
    def usercom_base(self) -> str:
        return f"{self.url}/usercom/api/public"

    @property
    def rownd_base(self) -> str:
        return f"{self.url}/rownd"

    @property
    def generic_base(self) -> str:
        return f"{self.url}/generic"

    # ---- recording and failures ---------------------------------------------------------------
    def requests_to(self, crm: str) -> list[Recorded]:
        """Recorded requests to one CRM ("customerly", "usercom", "rownd", "generic")."""
        return [r for r in self.requests if r.crm == crm]

    def clear(self) -> None:
        """Forget recorded requests and injected failures (not the stored contacts)."""
        self.requests.clear()
        self._failures.clear()

    def fail(self, path_prefix: str, *, status: int, times: int = 1, method: str | None = None,
             retry_after_s: float | None = None, body: Any = None) -> None:
        """Answer the next ``times`` matching requests with ``status`` (and Retry-After, if given)."""
        self._failures.append(_Failure(path_prefix, status, times, method, retry_after_s, body))

    @web.middleware
    async def _record(self, request: web.Request, handler):
        raw = await request.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        crm = request.path.split("/")[1] if request.path.count("/") > 1 else "-"
        rec = Recorded(crm, request.method, request.path, dict(request.query), CIMultiDict(request.headers), raw, parsed)
        self.requests.append(rec)
        for failure in self._failures:
            if failure.times > 0 and request.path.startswith(failure.path_prefix) and failure.method in (None, request.method):
                failure.times -= 1
                headers = {"Retry-After": str(int(failure.retry_after_s))} if failure.retry_after_s is not None else None
                rec.status = failure.status
                return _json(failure.body if failure.body is not None else {"error": "injected"}, failure.status, headers)
        response = await handler(request)
        rec.status = response.status
        return response

    # ---- Customerly ------------------------------------------------------------------------------
    def _cly_authorized(self, request: web.Request) -> bool:
        # Current clients: "Authorization: Bearer T"; older docs and WP Fusion: "Authentication: AccessToken: T".
        bearer = request.headers.get("Authorization", "")
        legacy = request.headers.get("Authentication", "")
        return bearer == f"Bearer {self.customerly_token}" or legacy == f"AccessToken: {self.customerly_token}"

    @staticmethod
    def _cly_auth_error() -> web.Response:
        # The real API reports a bad token as HTTP 500 with this body.
        return _json({"error": {"message": "Access token not found.", "code": 0}}, 500)

    def add_customerly_user(self, email: str, *, name: str | None = None, user_id: str | None = None,
                            attributes: dict | None = None, tags: list | None = None) -> dict:
        """Create or replace a Customerly user."""
        user = {"crmhero_user_id": next(self._ids), "app_id": "fakeapp", "user_id": user_id, "email": email,
                "name": name, "attributes": dict(attributes or {}), "tags": list(tags or []), "is_user": 1,
                "last_update": int(time.time())}
        self._customerly[email.lower()] = user
        return user

    def customerly_user(self, email: str) -> dict | None:
        return self._customerly.get(email.lower())

    async def _cly_get(self, request: web.Request) -> web.Response:
        if not self._cly_authorized(request):
            return self._cly_auth_error()
        user = self._customerly.get(request.query.get("email", "").lower())
        if user is None:
            # Unknown users come back as an error object (status not documented; 404 assumed).
            return _json({"error": {"message": "User doesn't exist", "code": 404}}, 404)
        return _json({"data": user})

    async def _cly_post(self, request: web.Request) -> web.Response:
        if not self._cly_authorized(request):
            return self._cly_auth_error()
        body = await request.json()
        inserted = updated = 0
        for item in body.get("users", []):
            email = str(item.get("email", "")).lower()
            if not email:
                return _json({"error": {"message": "email is required", "code": 400}}, 400)
            user = self._customerly.get(email)
            if user is None:
                user = self.add_customerly_user(item["email"])
                inserted += 1
            else:
                updated += 1
            for key in ("name", "user_id"):
                if key in item:
                    user[key] = item[key]
            user["attributes"].update(item.get("attributes") or {})
            if "tags" in item:
                user["tags"] = list(item["tags"])
            user["last_update"] = int(time.time())
        return _json({"data": {"inserted": inserted, "updated": updated}})

    # ---- User.com --------------------------------------------------------------------------------
    def _uc_check(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Token {self.usercom_key}":
            return _json({"detail": "Invalid token."}, 401)
        return None

    def add_usercom_user(self, *, email: str, first_name: str | None = None, last_name: str | None = None,
                         tags=(), attributes: dict | None = None) -> dict:
        """Create a User.com user with a new integer ID."""
        uid = next(self._ids)
        user = {"id": uid, "email": email, "first_name": first_name, "last_name": last_name,
                "name": " ".join(p for p in (first_name, last_name) if p) or None, "status": 1,
                "tags": [{"id": i + 1, "name": t} for i, t in enumerate(tags)],
                "attributes": [{"name_std": k, "value": v} for k, v in (attributes or {}).items()]}
        self._usercom[uid] = user
        return user

    def usercom_user(self, user_id: int) -> dict | None:
        return self._usercom.get(int(user_id))

    def _uc_user(self, request: web.Request) -> dict | None:
        try:
            return self._usercom.get(int(request.match_info["id"]))
        except ValueError:
            return None

    async def _uc_get(self, request: web.Request) -> web.Response:
        if (denied := self._uc_check(request)) is not None:
            return denied
        user = self._uc_user(request)
        return _json(user) if user else _json({"detail": "Not found."}, 404)

    async def _uc_search(self, request: web.Request) -> web.Response:
        if (denied := self._uc_check(request)) is not None:
            return denied
        email = request.query.get("email", "").lower()
        for user in self._usercom.values():
            if user["email"].lower() == email:
                return _json(user)
        return _json({"detail": "Not found."}, 404)

    async def _uc_set_attrs(self, request: web.Request) -> web.Response:
        if (denied := self._uc_check(request)) is not None:
            return denied
        user = self._uc_user(request)
        if user is None:
            return _json({"detail": "Not found."}, 404)
        body = await request.json()
        if not isinstance(body, dict):
            return _json({"detail": "Expected an object of attributes."}, 400)
        for key, value in body.items():
            for attr in user["attributes"]:
                if attr["name_std"] == key:
                    attr["value"] = value
                    break
            else:
                user["attributes"].append({"name_std": key, "value": value})
        return _json(user)

    async def _uc_add_tag(self, request: web.Request) -> web.Response:
        if (denied := self._uc_check(request)) is not None:
            return denied
        user = self._uc_user(request)
        if user is None:
            return _json({"detail": "Not found."}, 404)
        name = (await request.json()).get("name")
        if name not in [t["name"] for t in user["tags"]]:
            user["tags"].append({"id": next(self._ids), "name": name})
        return _json(user)

    async def _uc_remove_tag(self, request: web.Request) -> web.Response:
        if (denied := self._uc_check(request)) is not None:
            return denied
        user = self._uc_user(request)
        if user is None:
            return _json({"detail": "Not found."}, 404)
        name = (await request.json()).get("name")
        user["tags"] = [t for t in user["tags"] if t["name"] != name]
        return _json(user)

    # ---- Rownd ---------------------------------------------------------------------------------
    def add_rownd_user(self, app_id: str, user_id: str, data: dict) -> dict:
        self._rownd[(app_id, user_id)] = {"data": dict(data, user_id=user_id)}
        return self._rownd[(app_id, user_id)]

    def rownd_user(self, app_id: str, user_id: str) -> dict | None:
        return self._rownd.get((app_id, user_id))

    def _rownd_check(self, request: web.Request) -> web.Response | None:
        if (request.headers.get("x-rownd-app-key") != self.rownd_app_key
                or request.headers.get("x-rownd-app-secret") != self.rownd_app_secret):
            return _json({"statusCode": 401, "error": "Unauthorized", "message": "Invalid app credentials"}, 401)
        return None

    async def _rownd_get(self, request: web.Request) -> web.Response:
        if (denied := self._rownd_check(request)) is not None:
            return denied
        user = self._rownd.get((request.match_info["app"], request.match_info["user"]))
        if user is None:
            return _json({"statusCode": 404, "error": "Not Found", "message": "User not found"}, 404)
        return _json({"data": user["data"], "rownd_user": request.match_info["user"], "verified_data": {}, "meta": {}})

    async def _rownd_patch(self, request: web.Request) -> web.Response:
        if (denied := self._rownd_check(request)) is not None:
            return denied
        key = (request.match_info["app"], request.match_info["user"])
        user = self._rownd.setdefault(key, {"data": {"user_id": key[1]}})
        user["data"].update((await request.json()).get("data") or {})
        return _json({"data": user["data"], "rownd_user": key[1], "verified_data": {}, "meta": {}})

    # ---- Generic -------------------------------------------------------------------------------
    def add_generic_contact(self, contact_id: str, fields: dict) -> dict:
        """A generic contact: {"id", "email", "fields": {...}, "tags": [...]} from ``fields``."""
        contact = {"id": contact_id, "email": fields.get("email"), "fields": dict(fields.get("fields") or {}),
                   "tags": list(fields.get("tags") or [])}
        self._generic[contact_id] = contact
        return contact

    def generic_contact(self, contact_id: str) -> dict | None:
        return self._generic.get(contact_id)

    def _gen_check(self, request: web.Request) -> web.Response | None:
        if request.headers.get("X-Api-Key") != self.generic_key:
            return _json({"error": "unauthorized"}, 401)
        return None

    async def _gen_get(self, request: web.Request) -> web.Response:
        if (denied := self._gen_check(request)) is not None:
            return denied
        contact = self._generic.get(request.match_info["id"])
        return _json({"contact": contact}) if contact else _json({"error": "not found"}, 404)

    async def _gen_patch(self, request: web.Request) -> web.Response:
        if (denied := self._gen_check(request)) is not None:
            return denied
        contact = self._generic.get(request.match_info["id"])
        if contact is None:
            return _json({"error": "not found"}, 404)
        contact["fields"].update((await request.json()).get("fields") or {})
        return _json({"contact": contact})

    async def _gen_hook_create(self, request: web.Request) -> web.Response:
        if (denied := self._gen_check(request)) is not None:
            return denied
        body = await request.json()
        hook_id = str(next(self._ids))
        self.webhooks[hook_id] = {"id": int(hook_id), "active": True, "url": body.get("url"), "events": body.get("events", [])}
        return _json(self.webhooks[hook_id], 201)

    async def _gen_hook_list(self, request: web.Request) -> web.Response:
        if (denied := self._gen_check(request)) is not None:
            return denied
        return _json({"webhooks": list(self.webhooks.values())})

    async def _gen_hook_delete(self, request: web.Request) -> web.Response:
        if (denied := self._gen_check(request)) is not None:
            return denied
        if self.webhooks.pop(request.match_info["id"], None) is None:
            return _json({"error": "not found"}, 404)
        return web.Response(status=204)


def seed_demo(crm: FakeCRM) -> None:
    """A few Customerly contacts for `make demo`."""
    crm.add_customerly_user("ada@example.com", name="Ada Lovelace", tags=["vip", "newsletter"],
                            attributes={"first_name": "Ada", "last_name": "Lovelace", "company": "Analytical Engines"})
    crm.add_customerly_user("grace@example.com", name="Grace Hopper", tags=["newsletter"],
                            attributes={"first_name": "Grace", "last_name": "Hopper"})
    crm.add_customerly_user("linus@example.com", name="Linus T", tags=["beta"],
                            attributes={"first_name": "Linus", "last_name": "Torvalds", "user_login": "linus"})


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if "pass" in str(k).lower() else _masked(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


async def _serve(port: int, seed: bool) -> None:
    crm = FakeCRM(port=port)
    await crm.start()
    if seed:
        seed_demo(crm)
    print(f"fake CRM on {crm.url}: customerly {crm.customerly_base} usercom {crm.usercom_base} "
          f"rownd {crm.rownd_base} generic {crm.generic_base}", flush=True)
    last = 0
    while True:
        await asyncio.sleep(0.5)
        for rec in crm.requests[last:]:
            # What the CRM received, with password values masked even in this fake's log.
            body = json.dumps(_masked(rec.json)) if rec.json is not None else ""
            print(f"{rec.method} {rec.path} {json.dumps(rec.query)} → {rec.status} {body[:300]}", flush=True)
        last = len(crm.requests)


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake CRM server (Customerly, User.com, Rownd, generic) on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--seed-demo", action="store_true", help="add a few Customerly contacts")
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.port, args.seed_demo))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
