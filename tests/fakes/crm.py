"""One aiohttp server emulating the documented endpoints of Customerly, User.com, Rownd and a
generic CRM (shared/reference/crm-apis.md): same paths, auth headers, shapes and error styles.

Every request is recorded (``Recorded``); failures (429 with Retry-After, 5xx, ...) can be
injected with ``FakeCRM.fail``. Runnable on its own for the demo:
``python -m tests.fakes.crm --port 8799 --seed-demo``.

Answers that no public source pins down are marked "assumed" where they are made; the rest
follow crm-apis.md, the Customerly help centre ("How to create or update a user or lead via
API": ``POST /v1/users``, "it will return inserted = # of users passed") and the shapes the WP
Fusion Customerly / User.com modules read (``error.message``, ``detail``, ``id``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

CRMS = ("customerly", "usercom", "rownd", "generic")


@dataclass
class Recorded:
    """One request as the fake received it.

    ``path`` is the full path from the server root ("/customerly/v1/users"); ``headers`` is a
    ``multidict.CIMultiDict`` (case-insensitive: ``headers["authorization"]`` and
    ``headers["Authorization"]`` are the same); ``json`` is the parsed body, or None when the
    body is empty or not JSON; ``status`` is what the fake answered (injected failures included).
    """

    crm: str
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict
    body: bytes
    json: Any | None
    status: int = 0
    at: float = field(default_factory=time.monotonic)  # when it arrived (monotonic clock)


@dataclass
class _Failure:
    path_prefix: str
    status: int
    times: int
    method: str | None
    retry_after_s: float | None
    body: Any
    echo: bool = False


# Typed request storage where aiohttp offers it (3.13+), a plain key before that.
_RECORDED: Any = web.RequestKey("recorded", Recorded) if hasattr(web, "RequestKey") else "recorded"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _object(request: web.Request) -> dict | None:
    """The request's JSON body when it is an object, else None (parsed once, by the middleware)."""
    parsed = request[_RECORDED].json
    return parsed if isinstance(parsed, dict) else None


class FakeCRM:
    """The fake CRM server: ``await start()``, point connectors at the ``*_base`` URLs, ``await stop()``."""

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
        self.webhooks: dict[str, dict] = {}
        self._failures: list[_Failure] = []
        self._slow: list[list[Any]] = []
        self._customerly: dict[str, dict] = {}
        self._usercom: dict[int, dict] = {}
        self._usercom_tag_ids: dict[str, int] = {}
        self._rownd: dict[tuple[str, str], dict] = {}
        self._generic: dict[str, dict] = {}
        # IDs (Customerly crmhero_user_id, User.com id, webhook id) start from the clock, not at a fixed
        # number: a WordPress kept running between test sessions still holds the contact IDs of the
        # last run, and a repeated ID would make a new contact look like an old one.
        self._ids = itertools.count(int(time.time() * 1000) % 2_000_000_000)
        self._runner: web.AppRunner | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start serving on ``host`` (127.0.0.1) and set ``url``; port 0 picks any free port."""
        app = web.Application(middlewares=[self._record])
        r = app.router
        r.add_get("/customerly/v1/users", self._cly_get)
        r.add_post("/customerly/v1/users", self._cly_post)
        r.add_get("/usercom/api/public/users/", self._uc_list)
        r.add_get("/usercom/api/public/users/search/", self._uc_search)
        r.add_get("/usercom/api/public/users/{id}/", self._uc_get)
        r.add_post("/usercom/api/public/users/{id}/set_multiple_attributes/", self._uc_set_attrs)
        r.add_post("/usercom/api/public/users/{id}/add_tag/", self._uc_add_tag)
        r.add_delete("/usercom/api/public/users/{id}/remove_tag/", self._uc_remove_tag)
        r.add_get("/rownd/applications/{app}/users/data", self._rownd_list)
        r.add_get("/rownd/applications/{app}/users/{user}/data", self._rownd_get)
        r.add_patch("/rownd/applications/{app}/users/{user}/data", self._rownd_patch)
        r.add_get("/generic/contacts/{id}", self._gen_get)
        r.add_patch("/generic/contacts/{id}", self._gen_patch)
        r.add_post("/generic/webhooks", self._gen_hook_create)
        r.add_get("/generic/webhooks", self._gen_hook_list)
        r.add_delete("/generic/webhooks/{id}", self._gen_hook_delete)
        r.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        """Stop serving (the recorded requests and stored contacts stay readable)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeCRM:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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
        """Recorded requests to one CRM, in arrival order; raises ValueError for an unknown name."""
        if crm not in CRMS:
            raise ValueError(f"crm must be one of {CRMS}, not {crm!r}")
        return [r for r in self.requests if r.crm == crm]

    def clear(self) -> None:
        """Forget recorded requests and injected failures (not the stored contacts or webhooks)."""
        self.requests.clear()
        self._failures.clear()
        self._slow.clear()

    def fail(self, path_prefix: str, *, status: int, times: int = 1, method: str | None = None,
             retry_after_s: float | None = None, body: Any = None, echo: bool = False) -> None:
        """Answer the next ``times`` requests whose path starts with ``path_prefix`` (and whose method
        is ``method``, when given) with ``status``, a JSON ``body`` (default {"error": "injected"}) and,
        when ``retry_after_s`` is given, ``Retry-After`` in whole seconds (rounded up).

        ``echo=True`` answers in Customerly's error style with a message that quotes the request:
        its body and its auth headers, as APIs that echo the posted attributes in a validation
        error do (``{"error": {"message": "Invalid attributes: {...}", "code": status}}``)."""
        self._failures.append(_Failure(path_prefix, status, times, method.upper() if method else None,
                                       retry_after_s, body, echo))

    def slow(self, path_prefix: str, delay_s: float, *, times: int = 1, method: str | None = None) -> None:
        """Hold the next ``times`` requests whose path starts with ``path_prefix`` (and whose method is
        ``method``, when given) for ``delay_s`` before answering them as usual (a slow CRM)."""
        self._slow.append([path_prefix, delay_s, times, method.upper() if method else None])

    async def _delay(self, request: web.Request) -> None:
        for slow in self._slow:
            if slow[2] > 0 and request.path.startswith(slow[0]) and slow[3] in (None, request.method):
                slow[2] -= 1
                await asyncio.sleep(slow[1])
                return

    def _injected(self, request: web.Request) -> web.Response | None:
        for failure in self._failures:
            if failure.times > 0 and request.path.startswith(failure.path_prefix) \
                    and failure.method in (None, request.method):
                failure.times -= 1
                headers = None
                if failure.retry_after_s is not None:
                    headers = {"Retry-After": str(math.ceil(failure.retry_after_s))}
                if failure.echo:
                    body = {"error": {"message": _echo(request), "code": failure.status}}
                    return _json(body, failure.status, headers)
                return _json(failure.body if failure.body is not None else {"error": "injected"}, failure.status, headers)
        return None

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        first = request.path.split("/")[1] if request.path.count("/") > 1 else ""
        rec = Recorded(first if first in CRMS else "other", request.method, request.path, dict(request.query),
                       CIMultiDict(request.headers), raw, parsed)
        self.requests.append(rec)
        request[_RECORDED] = rec
        await self._delay(request)
        response = self._injected(request)
        if response is None:  # not `or`: a Response is a mapping and an empty one is falsy
            response = await handler(request)
        rec.status = response.status
        return response

    async def _unknown(self, request: web.Request) -> web.Response:
        # Each CRM's own not-found style, so a wrong path is visible as such in a client's error.
        crm = request[_RECORDED].crm
        if crm == "customerly":
            return _json({"error": {"message": "Not found", "code": 404}}, 404)
        if crm == "usercom":
            return _json({"detail": "Not found."}, 404)
        if crm == "rownd":
            return _json({"statusCode": 404, "error": "Not Found", "message": "Not Found"}, 404)
        return _json({"error": "not found"}, 404)

    # ---- Customerly ------------------------------------------------------------------------------
    def add_customerly_user(self, email: str, *, name: str | None = None, user_id: str | None = None,
                            attributes: dict | None = None, tags: list | None = None) -> dict:
        """Seed a Customerly user (replacing the fields given for an existing email; its IDs stay)."""
        key = email.lower()
        old = self._customerly.get(key)
        user = {"crmhero_user_id": old["crmhero_user_id"] if old else next(self._ids), "app_id": "fakeapp",
                "user_id": user_id if user_id is not None else (old or {}).get("user_id"), "email": email,
                "name": name if name is not None else (old or {}).get("name"),
                "attributes": dict(attributes) if attributes is not None else dict((old or {}).get("attributes", {})),
                "tags": list(tags) if tags is not None else list((old or {}).get("tags", [])),
                "is_user": 1, "last_update": int(time.time())}
        self._customerly[key] = user
        return user

    def customerly_user(self, email: str) -> dict | None:
        """The stored Customerly user for ``email`` (case-insensitive), as GET /users returns it."""
        return self._customerly.get(email.lower())

    def _cly_authorized(self, request: web.Request) -> bool:
        # Current clients send "Authorization: Bearer T"; older docs and WP Fusion "Authentication: AccessToken: T".
        bearer = request.headers.get("Authorization", "").strip()
        legacy = request.headers.get("Authentication", "").strip()
        return bearer == f"Bearer {self.customerly_token}" or legacy == f"AccessToken: {self.customerly_token}"

    @staticmethod
    def _cly_error(message: str, status: int, code: int) -> web.Response:
        return _json({"error": {"message": message, "code": code}}, status)

    async def _cly_get(self, request: web.Request) -> web.Response:
        if not self._cly_authorized(request):
            # The real API answers a missing or bad token with HTTP 500 and this body (crm-apis.md).
            return self._cly_error("Access token not found.", 500, 0)
        if "email" not in request.query:
            # Assumed: a plain GET /users (WP Fusion's connection test) lists users.
            return _json({"data": {"users": list(self._customerly.values())}})
        user = self._customerly.get(request.query["email"].lower())
        if user is None:
            # The message is documented ("User doesn't exist"); the status and code are not: 404 assumed.
            return self._cly_error("User doesn't exist", 404, 404)
        return _json({"data": user})

    async def _cly_post(self, request: web.Request) -> web.Response:
        if not self._cly_authorized(request):
            return self._cly_error("Access token not found.", 500, 0)
        body = _object(request)
        if body is None or not isinstance(body.get("users"), list):
            return self._cly_error('Expected a JSON object {"users": [...]}', 400, 400)  # assumed style
        inserted, not_added = 0, []
        for item in body["users"]:
            email = item.get("email") if isinstance(item, dict) else None
            if not isinstance(email, str) or "@" not in email:
                not_added.append(item)  # a client reads data.not_added; the email is the only required field
                continue
            user = self._customerly.get(email.lower()) or self.add_customerly_user(email)
            for key in ("name", "user_id"):
                if key in item:
                    user[key] = item[key]
            user["attributes"].update(item.get("attributes") or {})
            # "Add a list of tags you want to add to your users": tags are added, not replaced.
            user["tags"] += [t for t in item.get("tags") or [] if t not in user["tags"]]
            user["last_update"] = int(time.time())
            inserted += 1
        # "If everything goes well, it will return inserted = # of users passed" (Customerly help centre).
        return _json({"data": {"inserted": inserted, "not_added": not_added}})

    # ---- User.com --------------------------------------------------------------------------------
    def _uc_tag(self, name: str) -> dict:
        tag_id = self._usercom_tag_ids.setdefault(name, len(self._usercom_tag_ids) + 1)
        return {"id": tag_id, "name": name}

    def add_usercom_user(self, *, email: str, first_name: str | None = None, last_name: str | None = None,
                         tags: Any = (), attributes: dict | None = None) -> dict:
        """Seed a User.com user with a new integer ``id``; returns it as GET users/{id}/ does."""
        uid = next(self._ids)
        user = {"id": uid, "email": email, "first_name": first_name, "last_name": last_name,
                "name": " ".join(p for p in (first_name, last_name) if p) or None, "status": 1,
                "tags": [self._uc_tag(t) for t in tags],
                "attributes": [{"name_std": k, "value": v} for k, v in (attributes or {}).items()]}
        self._usercom[uid] = user
        return user

    def usercom_user(self, user_id: int) -> dict | None:
        """The stored User.com user, as GET users/{id}/ returns it."""
        return self._usercom.get(int(user_id))

    def _uc_denied(self, request: web.Request) -> web.Response | None:
        # Django REST framework token auth, as User.com answers it (WP Fusion reads "detail" on a 401).
        header = request.headers.get("Authorization")
        if header is None:
            return _json({"detail": "Authentication credentials were not provided."}, 401)
        if header.strip() != f"Token {self.usercom_key}":
            return _json({"detail": "Invalid token."}, 401)
        return None

    def _uc_user(self, request: web.Request) -> dict | None:
        try:
            return self._usercom.get(int(request.match_info["id"]))
        except ValueError:
            return None

    async def _uc_get(self, request: web.Request) -> web.Response:
        if (denied := self._uc_denied(request)) is not None:
            return denied
        user = self._uc_user(request)
        return _json(user) if user else _json({"detail": "Not found."}, 404)

    async def _uc_list(self, request: web.Request) -> web.Response:
        if (denied := self._uc_denied(request)) is not None:
            return denied
        # Assumed: Django REST framework's page shape (count, next, previous, results).
        users = list(self._usercom.values())
        return _json({"count": len(users), "next": None, "previous": None, "results": users[:100]})

    async def _uc_search(self, request: web.Request) -> web.Response:
        if (denied := self._uc_denied(request)) is not None:
            return denied
        # One user object, not a list (WP Fusion's User.com module reads "id" from the answer).
        email = request.query.get("email", "").lower()
        for user in self._usercom.values():
            if user["email"].lower() == email:
                return _json(user)
        return _json({"detail": "Not found."}, 404)

    async def _uc_set_attrs(self, request: web.Request) -> web.Response:
        if (denied := self._uc_denied(request)) is not None:
            return denied
        user = self._uc_user(request)
        if user is None:
            return _json({"detail": "Not found."}, 404)
        body = _object(request)
        if body is None:
            return _json({"detail": "Expected a JSON object of attributes."}, 400)
        for key, value in body.items():
            for attr in user["attributes"]:
                if attr["name_std"] == key:
                    attr["value"] = value
                    break
            else:
                user["attributes"].append({"name_std": key, "value": value})
        return _json(user)

    def _uc_tag_name(self, request: web.Request) -> tuple[dict | None, str | None, web.Response | None]:
        if (denied := self._uc_denied(request)) is not None:
            return None, None, denied
        user = self._uc_user(request)
        if user is None:
            return None, None, _json({"detail": "Not found."}, 404)
        name = (_object(request) or {}).get("name")
        if not isinstance(name, str) or not name:
            return None, None, _json({"name": ["This field is required."]}, 400)
        return user, name, None

    async def _uc_add_tag(self, request: web.Request) -> web.Response:
        user, name, error = self._uc_tag_name(request)
        if error is not None:
            return error
        if name not in [t["name"] for t in user["tags"]]:
            user["tags"].append(self._uc_tag(name))
        return _json(user)

    async def _uc_remove_tag(self, request: web.Request) -> web.Response:
        user, name, error = self._uc_tag_name(request)
        if error is not None:
            return error
        user["tags"] = [t for t in user["tags"] if t["name"] != name]
        return _json(user)

    # ---- Rownd ---------------------------------------------------------------------------------
    def add_rownd_user(self, app_id: str, user_id: str, data: dict) -> dict:
        """Seed a Rownd user's data fields (``user_id`` is added to them); returns the stored record."""
        self._rownd[(app_id, user_id)] = {"data": {**data, "user_id": user_id}}
        return self._rownd[(app_id, user_id)]

    def rownd_user(self, app_id: str, user_id: str) -> dict | None:
        """The stored record ``{"data": {...}}`` of one Rownd user, or None."""
        return self._rownd.get((app_id, user_id))

    def _rownd_denied(self, request: web.Request) -> web.Response | None:
        if (request.headers.get("x-rownd-app-key") != self.rownd_app_key
                or request.headers.get("x-rownd-app-secret") != self.rownd_app_secret):
            # The status is what any API answers; the body style is assumed.
            return _json({"statusCode": 401, "error": "Unauthorized", "message": "Invalid app credentials"}, 401)
        return None

    @staticmethod
    def _rownd_answer(user_id: str, record: dict) -> web.Response:
        return _json({"rownd_user": user_id, "data": record["data"], "verified_data": {},
                      "meta": {"modified": record.get("modified")}})

    async def _rownd_list(self, request: web.Request) -> web.Response:
        if (denied := self._rownd_denied(request)) is not None:
            return denied
        # Assumed: the application's users as {"results": [...], "total_results": N}.
        app = request.match_info["app"]
        results = [{"rownd_user": uid, "data": rec["data"]} for (a, uid), rec in self._rownd.items() if a == app]
        return _json({"results": results, "total_results": len(results)})

    async def _rownd_get(self, request: web.Request) -> web.Response:
        if (denied := self._rownd_denied(request)) is not None:
            return denied
        key = (request.match_info["app"], request.match_info["user"])
        record = self._rownd.get(key)
        if record is None:
            return _json({"statusCode": 404, "error": "Not Found", "message": "User not found"}, 404)
        return self._rownd_answer(key[1], record)

    async def _rownd_patch(self, request: web.Request) -> web.Response:
        if (denied := self._rownd_denied(request)) is not None:
            return denied
        body = _object(request)
        if body is None or not isinstance(body.get("data"), dict):
            return _json({"statusCode": 400, "error": "Bad Request", "message": 'Expected {"data": {...}}'}, 400)
        key = (request.match_info["app"], request.match_info["user"])
        # Assumed: PATCH creates the user's data when missing (Rownd's user-data write is an upsert).
        record = self._rownd.setdefault(key, {"data": {"user_id": key[1]}})
        record["data"].update(body["data"])
        record["modified"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return self._rownd_answer(key[1], record)

    # ---- Generic -------------------------------------------------------------------------------
    def add_generic_contact(self, contact_id: str, fields: dict) -> dict:
        """Seed a generic contact ``{"id", "email", "fields", "tags"}``.

        ``fields`` may be the whole record (keys ``email``, ``fields``, ``tags``); any other key is
        taken as a field: ``{"first": "Ada"}`` and ``{"fields": {"first": "Ada"}}`` are the same.
        """
        extra = {k: v for k, v in fields.items() if k not in ("email", "fields", "tags")}
        contact = {"id": contact_id, "email": fields.get("email"), "fields": {**(fields.get("fields") or {}), **extra},
                   "tags": list(fields.get("tags") or [])}
        self._generic[contact_id] = contact
        return contact

    def generic_contact(self, contact_id: str) -> dict | None:
        """The stored generic contact, as GET /contacts/{id} returns it under "contact"."""
        return self._generic.get(contact_id)

    def _gen_denied(self, request: web.Request) -> web.Response | None:
        if request.headers.get("X-Api-Key") != self.generic_key:
            return _json({"error": "unauthorized"}, 401)
        return None

    async def _gen_get(self, request: web.Request) -> web.Response:
        if (denied := self._gen_denied(request)) is not None:
            return denied
        contact = self._generic.get(request.match_info["id"])
        return _json({"contact": contact}) if contact else _json({"error": "not found"}, 404)

    async def _gen_patch(self, request: web.Request) -> web.Response:
        if (denied := self._gen_denied(request)) is not None:
            return denied
        contact = self._generic.get(request.match_info["id"])
        if contact is None:
            return _json({"error": "not found"}, 404)
        body = _object(request)
        if body is None or not isinstance(body.get("fields", {}), dict) or not isinstance(body.get("tags", []), list):
            return _json({"error": 'expected {"fields": {...}, "tags"?: [...]}'}, 400)
        contact["fields"].update(body.get("fields") or {})
        if "tags" in body:
            contact["tags"] = list(body["tags"])
        return _json({"contact": contact})

    async def _gen_hook_create(self, request: web.Request) -> web.Response:
        if (denied := self._gen_denied(request)) is not None:
            return denied
        body = _object(request)
        if body is None or not isinstance(body.get("url"), str) or not body["url"]:
            return _json({"error": 'expected {"url": ..., "events": [...]}'}, 400)
        hook_id = next(self._ids)
        # The Cyclr pattern (seed 001): the answer's "id" is kept and used later to delete the webhook.
        self.webhooks[str(hook_id)] = {"id": hook_id, "active": True, "url": body["url"],
                                       "events": list(body.get("events") or [])}
        return _json(self.webhooks[str(hook_id)], 201)

    async def _gen_hook_list(self, request: web.Request) -> web.Response:
        if (denied := self._gen_denied(request)) is not None:
            return denied
        return _json({"webhooks": list(self.webhooks.values())})

    async def _gen_hook_delete(self, request: web.Request) -> web.Response:
        if (denied := self._gen_denied(request)) is not None:
            return denied
        if self.webhooks.pop(request.match_info["id"], None) is None:
            return _json({"error": "not found"}, 404)
        return web.Response(status=204)


def _echo(request: web.Request) -> str:
    rec = request[_RECORDED]
    auth = {k: v for k, v in rec.headers.items() if k.lower() in ("authorization", "authentication", "x-api-key")}
    return f"Invalid attributes: {rec.body.decode('utf-8', 'replace')} (sent with {auth})"


def seed_demo(crm: FakeCRM) -> None:
    """A few Customerly contacts with name attributes and tags, for `make demo`."""
    crm.add_customerly_user("ada@example.com", name="Ada Lovelace", tags=["vip", "newsletter"],
                            attributes={"first_name": "Ada", "last_name": "Lovelace", "company": "Analytical Engines"})
    crm.add_customerly_user("grace@example.com", name="Grace Hopper", tags=["newsletter"],
                            attributes={"first_name": "Grace", "last_name": "Hopper"})
    crm.add_customerly_user("linus@example.com", name="Linus Torvalds", tags=["beta"],
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
    print(f"fake CRM on {crm.url}\n  customerly {crm.customerly_base}\n  usercom    {crm.usercom_base}\n"
          f"  rownd      {crm.rownd_base}\n  generic    {crm.generic_base}", flush=True)
    shown = 0
    try:
        while True:
            await asyncio.sleep(0.5)
            for rec in crm.requests[shown:]:
                # What the CRM received, with password values masked even in this fake's log.
                body = json.dumps(_masked(rec.json)) if rec.json is not None else ""
                print(f"{rec.method} {rec.path} {json.dumps(rec.query)} -> {rec.status} {body[:300]}", flush=True)
            shown = len(crm.requests)
    finally:
        await crm.stop()


def main() -> None:
    """Serve the fake CRM on 127.0.0.1 until interrupted."""
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
