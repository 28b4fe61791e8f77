"""The webhook handler: authenticate, parse (pure), store durably, answer.

Order matters: a wrong key is answered 403 before the body is read and nothing is stored;
an authenticated delivery that cannot be accepted is kept raw (``rejected``) and answered 4xx;
an accepted one is answered 202 only after its job is committed to disk.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import structlog
from aiohttp import web

from bridge.core.auth import key_matches, verify_signature
from bridge.core.delivery import dedupe_key, parse_delivery, public_query
from bridge.core.discovery import mask, shape
from bridge.errors import BadDelivery
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.store import queue as q
from bridge.store.jobs import JobStore
from bridge.web.throttle import FailureThrottle, client_address

log = structlog.get_logger("bridge.intake")
MAX_SHAPES = 1000
FINGERPRINT_MAX_BYTES = 4096


def json_error(err: BadDelivery, headers: dict[str, str] | None = None) -> web.Response:
    """The 4xx answer for a BadDelivery."""
    return web.json_response(err.as_json(), status=err.status, headers=headers)


class Intake:
    """Handles ``/`` (WP Fusion's URL contract) and ``/hooks/{connection}``."""

    def __init__(self, settings: Settings, store: JobStore, metrics: Metrics, on_enqueued: Callable[[], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.on_enqueued = on_enqueued
        self.clock = clock
        self.specs = {name: conn.spec() for name, conn in settings.connections.items()}
        self.default_connection = settings.default_connection()
        self.keys = [k.get_secret_value() for k in settings.server.access_keys]
        self.trusted_proxies = frozenset(settings.server.trusted_proxies)
        self.throttle = FailureThrottle(settings.server.auth_failures_per_min, settings.server.auth_tracker_size, time.monotonic)
        # Bound once (after logging is configured), not per delivery through the lazy proxy.
        self.log = log.bind()
        self._shapes: set[tuple[str, str]] = set()
        self._fingerprints: set[tuple[str, Any]] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one delivery; never raises for bad input."""
        remote = request.remote
        forwarded = request.headers.get("X-Forwarded-For") if remote in self.trusted_proxies else None
        address = client_address(remote, forwarded, self.trusted_proxies)
        wait_s = self.throttle.blocked(address)
        if wait_s is not None:
            self.metrics.delivery(None, "throttled")
            return json_error(BadDelivery(429, "too_many_failures", "too many requests with a wrong access key; slow down"),
                              {"Retry-After": str(int(wait_s) + 1)})
        provided = request.query.get("access_key") or request.headers.get("X-Access-Key")
        if not key_matches(provided, self.keys):
            self.throttle.failed(address)
            self.metrics.delivery(None, "forbidden")
            self.log.warning("delivery.forbidden", remote=address, key_given=bool(provided))
            return json_error(BadDelivery(403, "invalid_access_key", "Invalid Access Key" if provided else "access_key is missing", field="access_key"))
        connection = request.match_info.get("connection") or request.query.get("connection") or self.default_connection
        query = dict(request.query)
        try:
            body = await self._read_body(request)
        except BadDelivery as err:
            self.metrics.delivery(connection, err.code)
            return json_error(err)
        try:
            return await self._accept(request, connection, query, body)
        except BadDelivery as err:
            await self.store.reject(connection=connection, status=err.status, reason=f"{err.code}: {err.message}",
                                    method=request.method, query=public_query(query),
                                    content_type=request.headers.get("Content-Type"), body=body)
            self.metrics.delivery(connection, err.code)
            self.log.info("delivery.rejected", connection=connection, status=err.status, reason=err.code, detail=err.message)
            return json_error(err)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.server.max_body_bytes
        length = request.content_length  # parsed from the header on every access: once
        if length is not None:
            if length > limit:
                raise BadDelivery(413, "body_too_large", f"body of {length} bytes is over the limit of {limit}", field="body")
            return await request.read()  # within the limit: in one go
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise BadDelivery(413, "body_too_large", f"body is over the limit of {limit} bytes", field="body")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _accept(self, request: web.Request, connection: str | None, query: dict[str, str], body: bytes) -> web.Response:
        if connection is None or connection not in self.specs:
            known = ", ".join(sorted(self.specs)) or "none configured"
            raise BadDelivery(404, "unknown_connection", f"connection {str(connection)[:60]!r} is not configured (known: {known})", field="connection")
        conn = self.settings.connections[connection]
        if conn.signing_secrets:
            verify_signature([s.get_secret_value() for s in conn.signing_secrets], request.headers, body,
                             self.clock(), self.settings.server.signature_tolerance_s)
        delivery = parse_delivery(connection, self.specs[connection], query, request.headers.get("Content-Type"), body)
        if delivery.action == "test":
            self.metrics.delivery(connection, "test")
            return web.json_response({"success": True})
        key = dedupe_key(connection, query, body, request.headers.get("webhook-id"))
        job_id, duplicate = await self.store.enqueue(
            key, self.settings.server.dedupe_window_s, connection, delivery.action, delivery.contact_key, delivery.payload_json()
        )
        if duplicate:
            self.metrics.delivery(connection, "duplicate")
            self.log.info("delivery.duplicate", connection=connection, job_id=job_id)
            return web.json_response({"success": True, "job_id": job_id, "duplicate": True}, status=200)
        self.on_enqueued()
        self.metrics.delivery(connection, "accepted")
        # debug, not info: at thousands of deliveries a second one line each is noise, and every job
        # ends in an info line of its own (job.done / job.retry_scheduled / job.dead) with the same id.
        self.log.debug("delivery.accepted", connection=connection, job_id=job_id, action=delivery.action)
        if self._new_shape(connection, delivery.body, len(body)):
            await self.store.call(q.keep_sample, self.clock(), connection, json.dumps(mask(delivery.body)),
                                  self.settings.server.samples_per_connection)
        # The bytes json_response would send, without encoding a dict per delivery.
        return web.Response(body=b'{"success": true, "job_id": %d, "status": "queued"}' % job_id, status=202,
                            content_type="application/json")

    def _new_shape(self, connection: str, body: dict[str, Any], size: int) -> bool:
        """Whether this delivery is the first of its shape, so a masked copy of it is kept for
        ``wp-sync-bridge discover`` (a plain function: no coroutine per delivery)."""
        if not self.settings.server.samples_per_connection or not body or len(self._shapes) >= MAX_SHAPES:
            return False
        # shape() hashes every leaf path; a keys-only fingerprint costs a quarter of that, so a
        # fingerprint seen before skips it. Only small bodies' fingerprints are kept (bounded memory).
        if size <= FINGERPRINT_MAX_BYTES:
            seen = (connection, _fingerprint(body))
            if seen in self._fingerprints:
                return False
            if len(self._fingerprints) < MAX_SHAPES:
                self._fingerprints.add(seen)
        key = (connection, shape(body))
        if key in self._shapes:
            return False
        self._shapes.add(key)
        return True


def _fingerprint(value: Any) -> Any:
    """The document's keys and nesting, without its values: equal fingerprints mean equal shapes.
    (Parsed JSON holds plain dicts and lists only: exact type checks, the cheapest.)"""
    kind = type(value)
    if kind is dict:
        return tuple([(k, _fingerprint(v)) for k, v in value.items()])
    if kind is list:
        return (list, *[_fingerprint(v) for v in value])
    return None
