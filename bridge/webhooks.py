"""Webhook subscriptions created in the CRM through its API (the Cyclr pattern, seed 001):
create → keep the returned ID → later delete with ``{{webhook_id}}``.

Registering is idempotent: a subscription already stored (and, when the connector can list
subscriptions, still present in the CRM) is kept, not created twice.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bridge.clients.crm import CrmClient
from bridge.core.paths import get_path
from bridge.errors import ConfigError, Permanent
from bridge.settings import Settings
from bridge.store import operator


def hook_url(settings: Settings, connection: str, public_url: str | None) -> str:
    """The URL the CRM should call for this connection, access key included."""
    base = public_url or settings.server.public_url
    if not base:
        raise ConfigError("server.public_url", "needed to register a webhook (or pass --url)")
    if not settings.server.access_keys:
        raise ConfigError("server.access_keys", "needed to register a webhook")
    key = settings.server.access_keys[0].get_secret_value()
    return f"{base.rstrip('/')}/hooks/{connection}?{urlencode({'access_key': key})}"


def stored(conn: sqlite3.Connection, connection: str) -> sqlite3.Row | None:
    """The subscription the bridge created for a connection, if any."""
    return operator.webhook(conn, connection)


def _ids_in(data: Any, path: str | None) -> set[str]:
    items = get_path(data, path) if path else data
    if not isinstance(items, list):
        return set()
    return {str(item.get("id")) for item in items if isinstance(item, dict) and item.get("id") is not None}


async def _client(settings: Settings, connection: str, session: aiohttp.ClientSession) -> CrmClient:
    if connection not in settings.connections:
        raise ConfigError("connections", f"unknown connection {connection!r}")
    return CrmClient(connection, settings.connections[connection], session, settings.worker,
                     settings.wordpress.timeout_s)


async def register(conn: sqlite3.Connection, settings: Settings, connection: str,
                   url: str) -> tuple[str, bool]:
    """Create the subscription unless one exists: (remote_id, created_now)."""
    async with aiohttp.ClientSession() as session:
        crm = await _client(settings, connection, session)
        spec = crm.spec
        if spec.webhook_create is None:
            raise Permanent(crm.service, "this connector describes no webhook_create request")
        row = stored(conn, connection)
        if row is not None:
            if spec.webhook_list is None:
                return row["remote_id"], False
            remote = await crm.request(spec.webhook_list, {"webhook_url": url})
            if row["remote_id"] in _ids_in(remote, spec.webhook_list.response_path):
                return row["remote_id"], False
        answer = await crm.request(spec.webhook_create, {"webhook_url": url, "connection": connection})
        remote_id = get_path(answer, spec.webhook_create.response_path or "id")
        if remote_id in (None, ""):
            raise Permanent(crm.service, "webhook created but no ID at "
                            f"{spec.webhook_create.response_path or 'id'} in the answer")
        operator.keep_webhook(conn, connection, str(remote_id), url.split("?")[0], time.time())
        return str(remote_id), True


async def unregister(conn: sqlite3.Connection, settings: Settings, connection: str) -> str | None:
    """Delete the stored subscription in the CRM and forget it; the removed ID, or None if none."""
    row = stored(conn, connection)
    if row is None:
        return None
    async with aiohttp.ClientSession() as session:
        crm = await _client(settings, connection, session)
        if crm.spec.webhook_delete is None:
            raise Permanent(crm.service, "this connector describes no webhook_delete request")
        try:
            await crm.request(crm.spec.webhook_delete, {"webhook_id": row["remote_id"]})
        except Permanent as exc:
            if getattr(exc, "status", None) != 404:  # already gone in the CRM: forgetting it is right
                raise
    operator.forget_webhook(conn, connection)
    return row["remote_id"]


async def remote_list(settings: Settings, connection: str) -> list[str] | None:
    """IDs of the subscriptions the CRM reports, or None when the connector cannot list them."""
    async with aiohttp.ClientSession() as session:
        crm = await _client(settings, connection, session)
        if crm.spec.webhook_list is None:
            return None
        data = await crm.request(crm.spec.webhook_list, {})
        return sorted(_ids_in(data, crm.spec.webhook_list.response_path))
