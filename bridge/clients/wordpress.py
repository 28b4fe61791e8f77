"""The WordPress client: one interface over the companion plugin (``wordpress/wp-sync-bridge.php``),
two transports (REST by default, XML-RPC), chosen in configuration.

Both send the same argument objects to the same PHP functions, so their behaviour is identical;
the tests run the same suite against both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog

from bridge.clients.http import basic_auth, read_response, redact_error, redacting, retrying, send
from bridge.errors import RemoteError, Transient
from bridge.settings import Settings

log = structlog.get_logger("bridge.wordpress")
# 2: the plugin skips privileged users (outcome skipped_privileged) and refuses protected meta and
# roles the caller cannot grant (wordpress/SECURITY.md); a bridge of this version needs that plugin.
API_VERSION = 2
# An optional capability of plugin 2.1 (``features`` in status): many upserts in one request.
BATCH_FEATURE = "upsert_batch"


@dataclass
class UpsertRequest:
    """Arguments of the plugin's upsert (see wordpress/README.md). ``None`` means "leave as is"."""

    email: str
    login: str | None = None
    password: str | None = None
    set_password: bool = False
    first_name: str | None = None
    last_name: str | None = None
    display_name: str | None = None
    role: str | None = None
    default_role: str = "subscriber"
    meta: dict[str, Any] = field(default_factory=dict)
    tags: list[str] | None = None
    tags_key: str | None = None
    contact_id: str | None = None
    contact_id_key: str | None = None
    send_notification: bool = False
    create: bool = True
    request_id: str | None = None
    # WordPress's "email changed" notice to the old address (settings: wordpress.email_change_notice).
    notify_email_change: bool = True

    def as_args(self) -> dict[str, Any]:
        """The JSON/XML-RPC struct, without unset values (XML-RPC has no null). A shallow copy
        (``meta`` and ``tags`` are shared, and only read): ``dataclasses.asdict`` deep-copies, which
        was a tenth of the event loop's time per batched upsert."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class UpsertResult:
    """What the plugin did. ``outcome``: created | updated | unchanged | no_user | skipped_privileged
    (a user who can administer users or the site: the plugin wrote nothing)."""

    user_id: int | None
    created: bool
    outcome: str
    login: str | None = None
    role: str | None = None
    changed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    replayed: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "UpsertResult":
        return cls(
            user_id=data.get("user_id") or None,
            created=bool(data.get("created")),
            outcome=str(data.get("outcome", "")),
            login=data.get("login"),
            role=data.get("role"),
            changed=list(data.get("changed") or []),
            warnings=list(data.get("warnings") or []),
            replayed=bool(data.get("replayed")),
        )


def batch_limit(status: dict[str, Any]) -> int:
    """How many upserts one batch request may carry, from the plugin's status (0: no batch)."""
    if BATCH_FEATURE not in (status.get("features") or []):
        return 0
    try:
        return max(0, int((status.get("batch") or {}).get("max_items", 0)))
    except (TypeError, ValueError):
        return 0


def batch_passwords(requests: list[UpsertRequest]) -> tuple[str | None, ...]:
    """The passwords a batch carries: scrubbed from its errors, the request's and each item's."""
    return tuple(r.password for r in requests)


def read_batch(service: str, data: Any, sent: int,
               redact: tuple[str | None, ...] = ()) -> list[UpsertResult | RemoteError]:
    """The per-item answers of a batch upsert, in the order sent: a result, or the typed error the
    single upsert would have raised for that item (read by ``read_response``, as any answer), with
    ``redact`` (the batch's passwords) scrubbed from it."""
    items = data.get("results") if isinstance(data, dict) else None
    if isinstance(data, dict) and data.get("mode") == "per_item":
        # Every item was still applied (or refused) on its own; a site where this is frequent has
        # batches waiting on each other's rows (deadlocks) or failing queries: worth knowing.
        log.info("wordpress.batch_per_item", service=service, items=sent,
                 reason="the plugin rolled the batch's transaction back (a database error such as a "
                        "deadlock) and ran its items one by one")
    if not isinstance(items, list) or len(items) != sent:
        raise Transient(service, f"a batch of {sent} answered "
                                 f"{len(items) if isinstance(items, list) else 'no'} results")
    out: list[UpsertResult | RemoteError] = []
    for item in items:
        error = item.get("error") if isinstance(item, dict) else None
        if not isinstance(error, dict):
            out.append(UpsertResult.from_json(item if isinstance(item, dict) else {}))
            continue
        body = {"code": error.get("code"), "message": error.get("message", ""),
                "data": error.get("data") or {}}
        status = (error.get("data") or {}).get("status") or 500
        try:
            read_response(service, int(status), {}, json.dumps(body).encode())
            # a 2xx refusal: none known
            out.append(Transient(service, f"an item refused with status {status}"))
        except RemoteError as exc:
            out.append(redact_error(exc, redact))
    return out


class WordPress(Protocol):
    """What the bridge needs from WordPress."""

    async def status(self) -> dict[str, Any]: ...
    async def roles(self) -> dict[str, str]: ...
    async def lookup(self, email: str | None = None, contact_id: str | None = None,
                     contact_id_key: str | None = None, tags_key: str | None = None,
                     meta_keys: list[str] | None = None) -> dict[str, Any] | None: ...
    async def upsert(self, request: UpsertRequest) -> UpsertResult: ...
    async def upsert_batch(self, requests: list[UpsertRequest]) -> list[UpsertResult | RemoteError]: ...
    async def delete(self, args: dict[str, Any]) -> dict[str, Any]: ...
    async def close(self) -> None: ...


def _roles(data: dict[str, Any]) -> dict[str, str]:
    return {r["slug"]: r.get("name", r["slug"]) for r in data.get("roles", [])}


class RestWordPress:
    """The plugin's REST routes over one keep-alive aiohttp session with an application password."""

    service = "wordpress"

    def __init__(self, settings: Settings) -> None:
        wp = settings.wordpress
        self._base = wp.url.rstrip("/") + "/"
        self._timeout_s = wp.timeout_s
        self._retry = settings.worker
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=wp.max_connections),
            headers={
                "User-Agent": "wp-sync-bridge",
                "Accept": "application/json",
                "Authorization": basic_auth(wp.username, wp.application_password.get_secret_value()),
            },
        )

    async def _call(self, method: str, route: str, redact: tuple[str | None, ...] = (), **kwargs: Any) -> Any:
        # ?rest_route= works whatever the site's permalink settings are.
        params = {"rest_route": f"/wp-sync-bridge/v1/{route}", **kwargs.pop("params", {})}
        async for attempt in retrying(self._retry.http_attempts, self._retry.http_backoff_s,
                                      self._retry.http_max_wait_s):
            with attempt, redacting(redact):
                return await send(self._session, self.service, method, self._base, params=params,
                                  timeout_s=self._timeout_s, **kwargs)

    async def status(self) -> dict[str, Any]:
        """Plugin and WordPress versions; raises when the plugin is missing or credentials fail."""
        return await self._call("GET", "status")

    async def roles(self) -> dict[str, str]:
        """The site's roles, slug → name."""
        return _roles(await self._call("GET", "roles"))

    async def lookup(self, email=None, contact_id=None, contact_id_key=None, tags_key=None, meta_keys=None):
        """The user with this contact ID (meta) or exact email, or None."""
        params = {k: v for k, v in {"email": email, "contact_id": contact_id,
                                    "contact_id_key": contact_id_key,
                                     "tags_key": tags_key}.items() if v}
        if meta_keys:
            params["meta_keys"] = ",".join(meta_keys)
        data = await self._call("GET", "users/lookup", params=params)
        return data.get("user")

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        """Create or update the user (serialised per email inside WordPress)."""
        return UpsertResult.from_json(await self._call("POST", "users/upsert", redact=(request.password,),
                                                       json=request.as_args()))

    async def upsert_batch(self, requests: list[UpsertRequest]) -> list[UpsertResult | RemoteError]:
        """Upsert several users in one request (plugin feature ``upsert_batch``): per item a result
        or a typed error; raises for the request as a whole (credentials, transport)."""
        redact = batch_passwords(requests)
        data = await self._call("POST", "users/upsert-batch", redact=redact,
                                json={"users": [r.as_args() for r in requests]})
        return read_batch(self.service, data, len(requests), redact)

    async def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove the user's roles or delete the user (``policy``); administrators are never touched."""
        return await self._call("POST", "users/delete", json={k: v for k, v in args.items() if v is not None})

    async def close(self) -> None:
        await self._session.close()


def make_wordpress(settings: Settings) -> WordPress:
    """The transport chosen by ``wordpress.transport``."""
    if settings.wordpress.transport == "xmlrpc":
        from bridge.clients.wordpress_xmlrpc import XmlRpcWordPress

        return XmlRpcWordPress(settings)
    return RestWordPress(settings)
