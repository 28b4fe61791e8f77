"""The aiohttp edge: what happens on a connection before (and around) the application.

- **Malformed requests.** A request aiohttp cannot parse (a bad request line or header, an
  over-long line) is answered 400 with our JSON body and logged as one ``http.bad_request`` event
  that names the reason only. aiohttp's own ``RequestHandler.handle_error`` answers with the
  parser's message, which quotes the raw request line (``GET /?access_key=KEY ...``), and logs it
  with the exception through ``aiohttp.server`` (aiohttp/web_protocol.py: ``data_received`` turns an
  ``HttpProcessingError`` into ``_ErrInfo(status=400, message=exc.message)``; the error handler
  calls ``handle_error(request, 400, exc, message)``, which calls ``log_exception``).
- **Floods** (no key is needed to open a connection). The request line and headers must arrive
  within ``headers_timeout_s`` of the connection, or of the first byte of a request after a
  keep-alive pause (aiohttp has no such timeout); an idle keep-alive connection is closed after
  ``keepalive_timeout_s`` (aiohttp's own timer). At ``max_connections`` the oldest connection still
  waiting for its request is closed to make room, so idle and slowloris connections cannot keep a
  CRM out; only when every connection is busy with a request is the new one refused. Both are
  counted (``wpsb_http_connections_closed``) and warned about once a minute at most. The body
  timeout is the intake's (``Intake._read_body``): only the handler knows it is reading a body.
"""

from __future__ import annotations

import asyncio
import re
import resource
import time
from typing import Any, Callable

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from bridge.metrics import Metrics
from bridge.settings import ServerSettings

log = structlog.get_logger("bridge.web")
CAP_WARNING_INTERVAL_S = 60.0
LINGERING_TIME_S = 2.0
BAD_REQUEST = {"success": False, "error": "bad_request", "message": "malformed HTTP request"}
SERVER_ERROR = {"success": False, "error": "unavailable", "message": "internal error; retry later"}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def bad_request_reason(exc: BaseException | None) -> str:
    """A stable, secret-free name for a parse error: its class in snake case (``LineTooLong`` →
    ``line_too_long``). Never the exception's text, which quotes the request."""
    return _CAMEL.sub("_", type(exc).__name__).lower() if exc is not None else "unknown"


class ConnectionGuard:
    """The live connections of one server, oldest first, and the cap on their number."""

    def __init__(self, max_connections: int, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_connections = max_connections
        self.metrics = metrics
        self.clock = clock
        self._live: dict[GuardedRequestHandler, None] = {}  # insertion order: oldest first
        self._evicted = self._refused = 0
        self._warned_at: float | None = None

    def __len__(self) -> int:
        return len(self._live)

    def admit(self, handler: "GuardedRequestHandler") -> bool:
        """Whether a new connection may stay; at the cap, close the oldest waiting one for it."""
        if len(self._live) >= self.max_connections:
            victim = next((h for h in self._live if h.waiting_for_request), None)
            if victim is None:
                self._closed("refused")
                return False
            self._live.pop(victim, None)
            victim.force_close()
            self._closed("evicted")
        self._live[handler] = None
        return True

    def left(self, handler: "GuardedRequestHandler") -> None:
        """A connection is gone."""
        self._live.pop(handler, None)

    def closed_early(self, reason: str) -> None:
        """Count a connection closed for ``reason`` (e.g. ``headers_timeout``)."""
        if self.metrics is not None:
            self.metrics.connection_closed(reason)

    def _closed(self, reason: str) -> None:
        self.closed_early(reason)
        if reason == "evicted":
            self._evicted += 1
        else:
            self._refused += 1
        now = self.clock()
        if self._warned_at is None or now - self._warned_at >= CAP_WARNING_INTERVAL_S:
            log.warning("http.connection_cap", max_connections=self.max_connections,
                        evicted=self._evicted, refused=self._refused)
            self._warned_at, self._evicted, self._refused = now, 0, 0


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a headers timeout, the connection cap, and parse errors
    answered and logged without the request's text."""

    __slots__ = ("_guard", "_headers_timeout_s", "_headers_timer")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, headers_timeout_s: float,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._headers_timeout_s = headers_timeout_s
        self._headers_timer: asyncio.TimerHandle | None = None

    @property
    def waiting_for_request(self) -> bool:
        """Connected, with no request being handled or parsed and waiting (idle or mid-headers)."""
        return not self._request_in_progress and not self._messages and not self._force_close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            self._manager = None  # so connection_lost does nothing: the connection never started
            transport.abort()
            return
        super().connection_made(transport)
        self._arm_headers_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.left(self)
        self._cancel_headers_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:  # a whole request line and headers (or a parse error) arrived
            self._cancel_headers_timer()
        elif data and self._headers_timer is None and self._waiter is not None and not self._waiter.done():
            self._arm_headers_timer()  # the first bytes of the next request on a kept-alive connection

    def _arm_headers_timer(self) -> None:
        self._cancel_headers_timer()
        self._headers_timer = self._loop.call_later(self._headers_timeout_s, self._headers_late)

    def _cancel_headers_timer(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_late(self) -> None:
        self._headers_timer = None
        if self.transport is not None and self.waiting_for_request:
            self._guard.closed_early("headers_timeout")
            self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Our JSON answer for an error aiohttp met outside the application (``message`` and the
        exception's text are never used: they quote the request)."""
        if status < 500:
            log.info("http.bad_request", status=status, reason=bad_request_reason(exc), remote=request.remote)
            body = BAD_REQUEST
        else:
            self.log_exception("request failed", exc_info=exc)
            body = SERVER_ERROR
        if request.writer.output_size > 0:  # part of an answer is out: the connection is beyond repair
            raise ConnectionError("response already started; cannot send the error answer")
        resp = web.json_response(body, status=status)
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's "Unhandled exception" and friends, as one redacted event (a parse error's text
        is left out: it quotes the request)."""
        exc = kw.get("exc_info")
        error = type(exc).__name__ if isinstance(exc, BaseException) else None
        if isinstance(exc, BaseException) and not isinstance(exc, HttpProcessingError):
            error = f"{error}: {exc}"
        log.error("http.server_error", message=str(args[0]) if args else None, error=error)


class GuardedServer(web.Server):
    """``web.Server`` whose connections are ``GuardedRequestHandler``s (``guard`` set by make_runner)."""

    guard: ConnectionGuard
    headers_timeout_s: float

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, guard=self.guard,
                                     headers_timeout_s=self.headers_timeout_s, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner serving through a GuardedServer."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, headers_timeout_s: float,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self.headers_timeout_s = headers_timeout_s

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # AppRunner builds its Server through the application's private _make_handler; rather
        # than copy that, the Server it built becomes a GuardedServer (same state, one method
        # more: the protocol factory).
        server.__class__ = GuardedServer
        server.guard, server.headers_timeout_s = self.guard, self.headers_timeout_s
        return server


def fd_budget(server: ServerSettings) -> int:
    """Descriptors the server may need at once: the cap, two accept rounds of the backlog (accepted
    before the cap sees them), and a margin for the database, the writer and outgoing sessions."""
    return server.max_connections + 2 * server.backlog + 64


def make_runner(app: web.Application, server: ServerSettings, metrics: Metrics | None = None,
                **kwargs: Any) -> GuardedRunner:
    """The runner for ``app`` with the flood settings of ``server`` (timeouts, connection cap).
    Warns (``http.fd_limit_low``) when the process's descriptor limit is below what they need."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < fd_budget(server):
        log.warning("http.fd_limit_low", limit=soft, needed=fd_budget(server),
                    max_connections=server.max_connections, backlog=server.backlog,
                    hint="raise LimitNOFILE= or lower server.max_connections")
    guard = ConnectionGuard(server.max_connections, metrics)
    # lingering_time: after an early answer (413, 408) aiohttp reads and drops the rest of the body
    # for this long before closing; 10 s by default, which a trickling sender would get for free.
    return GuardedRunner(app, guard, server.headers_timeout_s, keepalive_timeout=server.keepalive_timeout_s,
                         lingering_time=LINGERING_TIME_S, access_log=None, **kwargs)
