"""The webhook handler: authenticate, parse (pure), store durably, answer.

Order matters: a wrong key is answered 403 before the body is read and nothing is stored;
an authenticated delivery that cannot be accepted is kept raw (``rejected``) and answered 4xx;
an accepted one is answered 202 only after its job is committed to disk.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from typing import Any, Callable

import structlog
from aiohttp import web
from aiohttp.http_parser import HAS_BROTLI
from aiohttp.web_protocol import RequestPayloadError

from bridge.batching import Traffic
from bridge.core.auth import SIGNATURE_HEADERS, key_matches, verify_signature
from bridge.core.contacts import LINK_LOG, links_from_deliveries
from bridge.core.delivery import dedupe_key, event_id, parse_delivery, public_query
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
# The encodings aiohttp's parser decodes (http_parser.HttpRequestParser); any other would reach the
# JSON parser still encoded. zstd is refused by the parser itself unless its module is installed.
DECODED_ENCODINGS = ("", "identity", "gzip", "deflate", *(("br",) if HAS_BROTLI else ()))


def json_error(err: BadDelivery, headers: dict[str, str] | None = None) -> web.Response:
    """The 4xx answer for a BadDelivery."""
    return web.json_response(err.as_json(), status=err.status, headers=headers)


class Intake:
    """Handles ``/`` (WP Fusion's URL contract) and ``/hooks/{connection}``."""

    def __init__(self, settings: Settings, store: JobStore, metrics: Metrics, on_enqueued: Callable[[], None],
                 clock: Callable[[], float] = time.time, traffic: Traffic | None = None) -> None:
        self.settings = settings
        self.traffic = traffic if traffic is not None else Traffic()
        self.store = store
        self.metrics = metrics
        self.on_enqueued = on_enqueued
        self.clock = clock
        self.specs = {name: conn.spec() for name, conn in settings.connections.items()}
        self.default_connection = settings.default_connection()
        self.keys = [k.get_secret_value() for k in settings.server.access_keys]
        self.connection_keys = {name: [k.get_secret_value() for k in conn.access_keys]
                                for name, conn in settings.connections.items()}
        self.trusted_proxies = frozenset(settings.server.trusted_proxies)
        self.throttle = FailureThrottle(settings.server.auth_failures_per_min,
                                        settings.server.auth_tracker_size, time.monotonic)
        # Bound once (after logging is configured), not per delivery through the lazy proxy.
        self.log = log.bind()
        self._shapes: set[tuple[str, str]] = set()
        self._fingerprints: set[tuple[str, Any]] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one delivery; never raises for bad input."""
        self.traffic.started()
        try:
            return await self._handle(request)
        finally:
            self.traffic.finished()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        remote = request.remote
        forwarded = request.headers.get("X-Forwarded-For") if remote in self.trusted_proxies else None
        address = client_address(remote, forwarded, self.trusted_proxies)
        wait_s = self.throttle.blocked(address)
        if wait_s is not None:
            self.metrics.delivery(None, "throttled")
            return json_error(BadDelivery(429, "too_many_failures",
                                          "too many requests with a wrong access key; slow down"),
                              {"Retry-After": str(int(wait_s) + 1)})
        connection = (request.match_info.get("connection") or request.query.get("connection")
                      or self.default_connection)
        provided = request.query.get("access_key") or request.headers.get("X-Access-Key")
        scope = self._key_scope(provided, connection)
        if scope is None:
            self.throttle.failed(address)
            self.metrics.delivery(None, "forbidden")
            self.log.warning("delivery.forbidden", remote=address, key_given=bool(provided))
            return json_error(BadDelivery(403, "invalid_access_key",
                                          "Invalid Access Key" if provided else "access_key is missing",
                                          field="access_key"))
        conn = self.settings.connections.get(connection) if connection else None
        if conn is not None and conn.allowed_networks and not _in_networks(address, conn.allowed_networks):
            self.metrics.delivery(connection, "network_not_allowed")
            self.log.warning("delivery.forbidden", remote=address, connection=connection,
                             reason="network_not_allowed")
            return json_error(BadDelivery(403, "network_not_allowed",
                                          f"deliveries for {connection!r} are not accepted from this address",
                                          field="connection"))
        query = dict(request.query)
        try:
            body = await self._read_body(request)
            if conn is not None and conn.signing_secrets:
                # Unsigned is unauthenticated: answered 401 and not kept (a replay could not check it).
                verify_signature([s.get_secret_value() for s in conn.signing_secrets], request.headers, body,
                                 self.clock(), self.settings.server.signature_tolerance_s)
        except BadDelivery as err:
            self.metrics.delivery(connection if conn is not None else None, err.code)
            if err.status == 401:
                self.log.warning("delivery.forbidden", remote=address, connection=connection, reason=err.code)
            return json_error(err)
        try:
            return await self._accept(request, connection, query, body)
        except BadDelivery as err:
            auth: dict[str, Any] = {"scope": scope}
            if conn is not None and conn.signing_secrets:
                auth["webhook"] = {h: request.headers.get(h) for h in SIGNATURE_HEADERS}
            await self.store.reject(connection=connection, status=err.status,
                                    reason=f"{err.code}: {err.message}",
                                    method=request.method, query=public_query(query),
                                    content_type=request.headers.get("Content-Type"), body=body, auth=auth)
            self.metrics.delivery(connection if conn is not None else None, err.code)
            self.log.info("delivery.rejected", connection=connection, status=err.status, reason=err.code,
                          detail=err.message)
            return json_error(err)

    def _key_scope(self, provided: str | None, connection: str | None) -> str | None:
        """``global`` or ``connection`` for a key that may deliver to ``connection``; None otherwise.
        Every configured key is compared (constant time), whichever matches."""
        scoped = self.connection_keys.get(connection or "", ())
        global_ok = key_matches(provided, self.keys)
        scoped_ok = key_matches(provided, scoped)
        if global_ok:
            return "global"
        return "connection" if scoped_ok else None

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, within the size limit and ``server.body_timeout_s`` (a slow sender gets a 408;
        aiohttp then reads what is left for a short lingering time and closes the connection)."""
        if request.content.is_eof():  # the whole body came with the headers: nothing to wait for
            return await self._read_body_now(request)
        try:
            async with asyncio.timeout(self.settings.server.body_timeout_s):
                return await self._read_body_now(request)
        except TimeoutError:
            raise BadDelivery(408, "body_timeout",
                              f"the body did not arrive within {self.settings.server.body_timeout_s:g} s",
                              field="body") from None

    async def _read_body_now(self, request: web.Request) -> bytes:
        """The body, decoded; BadDelivery 413 over the limit, 415 for a Content-Encoding aiohttp
        would pass through undecoded, 400 for one it cannot decode (a corrupt gzip)."""
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in DECODED_ENCODINGS:
            raise BadDelivery(415, "unsupported_content_encoding",
                              f"Content-Encoding {encoding[:40]!r} is not accepted; "
                              f"send {', '.join(DECODED_ENCODINGS[1:])} or none",
                              field="content-encoding")
        try:
            return await self._read_decoded(request)
        except RequestPayloadError as exc:
            raise BadDelivery(400, "invalid_content_encoding",
                              f"the body cannot be decoded as Content-Encoding {encoding!r}: "
                              f"{str(exc).split(':')[-1].strip()[:80]}",
                              field="content-encoding") from None

    async def _read_decoded(self, request: web.Request) -> bytes:
        limit = self.settings.server.max_body_bytes
        length = request.content_length  # parsed from the header on every access: once
        if length is not None:
            if length > limit:
                raise BadDelivery(413, "body_too_large",
                                  f"body of {length} bytes is over the limit of {limit}", field="body")
            return await request.read()  # within the limit: in one go
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise BadDelivery(413, "body_too_large", f"body is over the limit of {limit} bytes",
                                  field="body")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _accept(self, request: web.Request, connection: str | None, query: dict[str, str],
                      body: bytes) -> web.Response:
        if connection is None or connection not in self.specs:
            known = ", ".join(sorted(self.specs)) or "none configured"
            raise BadDelivery(404, "unknown_connection",
                              f"connection {str(connection)[:60]!r} is not configured (known: {known})",
                              field="connection")
        conn = self.settings.connections[connection]
        delivery = parse_delivery(connection, self.specs[connection], query,
                                  request.headers.get("Content-Type"), body,
                                  conn.overrides_allowed())
        if delivery.action == "test":
            self.metrics.delivery(connection, "test")
            return web.json_response({"success": True})
        event = event_id(self.specs[connection], request.headers, delivery.body)
        key = dedupe_key(connection, query, body, event)
        # Without the sender's event ID a repeat merges only into a job that still waits.
        job_id, duplicate, linked = await self.store.enqueue_contact(
            key, self.settings.server.dedupe_window_s, connection, delivery.action, delivery.contact_id,
            delivery.email, delivery.payload_json(), event is None,
            links_from_deliveries(conn.fetch_contact and self.specs[connection].fetch is not None),
        )
        if (how := LINK_LOG.get(linked)) is not None:  # a link learned or refused: bridge.core.contacts
            getattr(self.log, how[0])(how[1], connection=connection, contact_id=delivery.contact_id,
                                      job_id=job_id)
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


def _in_networks(address: str, networks: list) -> bool:
    """Whether a client address lies in one of the networks (an unparsable address never does)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks if net.version == ip.version)


def _fingerprint(value: Any) -> Any:
    """The document's keys and nesting, without its values: equal fingerprints mean equal shapes.
    (Parsed JSON holds plain dicts and lists only: exact type checks, the cheapest.)"""
    kind = type(value)
    if kind is dict:
        return tuple([(k, _fingerprint(v)) for k, v in value.items()])
    if kind is list:
        return (list, *[_fingerprint(v) for v in value])
    return None
