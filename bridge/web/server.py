"""The aiohttp application: routes, the error middleware, health and metrics endpoints."""

from __future__ import annotations

from typing import Awaitable, Callable

import structlog
from aiohttp import web

from bridge.web.intake import Intake

log = structlog.get_logger("bridge.web")
Health = Callable[[], Awaitable[tuple[bool, dict]]]


@web.middleware
async def never_500(request: web.Request, handler):
    """Unexpected errors answer 503 (retry later) with JSON; they never crash the server."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return web.json_response({"success": False, "error": exc.reason.lower().replace(" ", "_"), "message": exc.reason}, status=exc.status)
        raise
    except Exception as exc:  # the sender will retry; the operator reads the log
        log.error("http.unhandled", path=request.path, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return web.json_response({"success": False, "error": "unavailable", "message": "the delivery could not be stored; retry later"},
                                 status=503, headers={"Retry-After": "5"})


def make_app(intake: Intake, ready: Health, metrics_body: Callable[[], Awaitable[bytes]], max_body_bytes: int) -> web.Application:
    """The web application; ``ready`` reports readiness, ``metrics_body`` renders /metrics."""
    app = web.Application(middlewares=[never_500], client_max_size=max_body_bytes)
    methods = ("GET", "POST", "PUT", "PATCH")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(request: web.Request) -> web.Response:
        ok, detail = await ready()
        return web.json_response({"ready": ok, **detail}, status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=await metrics_body(), content_type="text/plain")

    for method in methods:
        app.router.add_route(method, "/", intake.handle)
        app.router.add_route(method, "/hooks/{connection}", intake.handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
