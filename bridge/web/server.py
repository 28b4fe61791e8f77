"""The aiohttp application: routes, JSON errors for everything, health and metrics endpoints.

No middleware: aiohttp runs an application's middlewares through two extra coroutine layers per
request, which cost the webhook intake about 4 % of its throughput (``bench/intake.py``). Each handler
is instead registered for every method through ``_route``, which answers a method it does not take
with a JSON 405 and any unexpected error with a JSON 503; a last catch-all route answers unknown
paths with a JSON 404. Below the application, each connection is guarded (``bridge.web.edge``):
malformed requests, header and body timeouts, the connection cap.
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

import structlog
from aiohttp import hdrs, web

from bridge.web.intake import Intake

log = structlog.get_logger("bridge.web")
Health = Callable[[], Awaitable[tuple[bool, dict]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"success": False, "error": error, "message": message}, status=status,
                             headers=headers)


def _route(methods: tuple[str, ...], handler: Handler) -> Handler:
    """``handler`` for ``methods`` only (405 otherwise); an unexpected error answers 503 (retry
    later) with JSON and is logged; it never crashes the server or answers 500."""
    allowed = frozenset(methods)
    allow_header = ", ".join(methods)

    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.method not in allowed:
            return _error(405, "method_not_allowed", "Method Not Allowed", {"Allow": allow_header})
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
            raise
        except Exception as exc:  # the sender will retry; the operator reads the log
            log.error("http.unhandled", path=request.path, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            return _error(503, "unavailable", "the delivery could not be stored; retry later",
                          {"Retry-After": "5"})

    return guarded


def metrics_handler(metrics_body: Callable[[], Awaitable[bytes]], token: str | None) -> Handler:
    """``/metrics``: the exposition, behind ``Authorization: Bearer TOKEN`` when a token is set."""
    expected = f"Bearer {token}".encode() if token else None

    async def metrics(request: web.Request) -> web.Response:
        if expected is not None:
            given = request.headers.get(hdrs.AUTHORIZATION, "").encode()
            if not hmac.compare_digest(given, expected):
                return _error(401, "unauthorized", "a bearer token is required",
                              {"WWW-Authenticate": "Bearer"})
        return web.Response(body=await metrics_body(), content_type="text/plain")

    return metrics


def make_metrics_app(metrics_body: Callable[[], Awaitable[bytes]], token: str | None) -> web.Application:
    """An application serving only ``/metrics`` (``server.metrics_host``/``metrics_port``)."""
    app = web.Application()

    async def not_found(request: web.Request) -> web.Response:
        return _error(404, "not_found", "Not Found")

    app.router.add_route("*", "/metrics", _route(("GET", "HEAD"), metrics_handler(metrics_body, token)))
    app.router.add_route("*", "/{tail:.*}", _route(tuple(sorted(hdrs.METH_ALL)), not_found))
    return app


def make_app(intake: Intake, ready: Health, metrics_body: Callable[[], Awaitable[bytes]] | None,
             max_body_bytes: int, metrics_token: str | None = None) -> web.Application:
    """The web application; ``ready`` reports readiness, ``metrics_body`` renders /metrics (None:
    /metrics is served on an address of its own, see ``make_metrics_app``)."""
    app = web.Application(client_max_size=max_body_bytes)
    webhook_methods = ("GET", "POST", "PUT", "PATCH")
    read_methods = ("GET", "HEAD")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(request: web.Request) -> web.Response:
        ok, detail = await ready()
        return web.json_response({"ready": ok, **detail}, status=200 if ok else 503)

    async def not_found(request: web.Request) -> web.Response:
        return _error(404, "not_found", "Not Found")

    intake_handler = _route(webhook_methods, intake.handle)
    app.router.add_route("*", "/", intake_handler)
    app.router.add_route("*", "/hooks/{connection}", intake_handler)
    app.router.add_route("*", "/healthz", _route(read_methods, healthz))
    app.router.add_route("*", "/readyz", _route(read_methods, readyz))
    if metrics_body is not None:
        app.router.add_route("*", "/metrics",
                             _route(read_methods, metrics_handler(metrics_body, metrics_token)))
    app.router.add_route("*", "/{tail:.*}", _route(tuple(sorted(hdrs.METH_ALL)), not_found))
    return app
