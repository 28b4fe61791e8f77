"""The bridge's lifecycle: start in order (logging → database → HTTP sessions → workers → web
server), stop in reverse, drain on SIGTERM within the grace period."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import structlog
from aiohttp import web

from bridge.clients.crm import CrmClient
from bridge.clients.wordpress import API_VERSION, make_wordpress
from bridge.logs import Redactor
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.store.jobs import JobStore
from bridge.sync import SyncContext
from bridge.tasks import TaskGroup
from bridge.web.intake import Intake
from bridge.web.server import make_app
from bridge.worker import Worker

log = structlog.get_logger("bridge.app")
WP_CHECK_INTERVAL_S = 30.0


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret value, for the log redactor."""
    values = [k.get_secret_value() for k in settings.server.access_keys]
    values.append(settings.wordpress.application_password.get_secret_value())
    for conn in settings.connections.values():
        values.extend(conn.secret_values().values())
        values.extend(s.get_secret_value() for s in conn.signing_secrets)
    return [v for v in values if v]


class Bridge:
    """One running bridge. ``await start()``, then ``await stop()`` (or ``run()`` until a signal)."""

    def __init__(self, settings: Settings, redactor: Redactor | None = None) -> None:
        self.settings = settings
        self.redactor = redactor
        self.metrics = Metrics()
        self.store: JobStore | None = None
        self.worker: Worker | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._wordpress = None
        self._background = TaskGroup()
        self._wp_ok: bool | None = None
        self._wp_error: str | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Open the database, the HTTP sessions, start workers and the web server."""
        s = self.settings
        if self.redactor is not None:
            self.redactor.add(secrets_of(s))
        self.store = JobStore.open(s.database.path)
        self._session = aiohttp.ClientSession(headers={"User-Agent": "wp-sync-bridge"})
        self._wordpress = make_wordpress(s)
        crms = {name: CrmClient(name, conn, self._session, s.worker, s.wordpress.timeout_s) for name, conn in s.connections.items()}
        ctx = SyncContext(s, self._wordpress, crms, self.store)
        self.worker = Worker(ctx, self.store, self.metrics)
        await self.worker.start()
        self._background.spawn(self._watch_wordpress(), "wordpress.check")
        intake = Intake(s, self.store, self.metrics, self.worker.notify)
        app = make_app(intake, self._ready, self._metrics_body, s.server.max_body_bytes)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, s.server.host, s.server.port, backlog=1024)
        await site.start()
        self.port = self.runner.addresses[0][1]
        log.info("bridge.started", host=s.server.host, port=self.port, connections=sorted(s.connections),
                 transport=s.wordpress.transport, database=str(s.database.path))

    async def stop(self) -> None:
        """Stop accepting, drain running jobs within the grace period, close everything."""
        started = time.monotonic()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.worker is not None:
            await self.worker.stop(self.settings.worker.shutdown_grace_s)
        await self._background.cancel()
        if self._wordpress is not None:
            await self._wordpress.close()
        if self._session is not None:
            await self._session.close()
        if self.store is not None:
            self.store.close()
        log.info("bridge.stopped", took_s=round(time.monotonic() - started, 3))
        self._stopped.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("bridge.stopping", grace_s=self.settings.worker.shutdown_grace_s)
        await self.stop()

    async def _watch_wordpress(self) -> None:
        while True:
            try:
                status = await self._wordpress.status()
                api = int(status.get("api_version", 0))
                if api != API_VERSION:
                    self._wp_ok, self._wp_error = False, f"plugin api_version {api}, bridge needs {API_VERSION}"
                else:
                    if self._wp_ok is not True:
                        log.info("wordpress.reachable", plugin=status.get("plugin_version"), wordpress=status.get("wordpress_version"))
                    self._wp_ok, self._wp_error = True, None
            except Exception as exc:  # readiness reports it; the queue keeps jobs meanwhile
                if self._wp_ok is not False:
                    log.warning("wordpress.unreachable", error=str(exc))
                self._wp_ok, self._wp_error = False, str(exc)
            await asyncio.sleep(WP_CHECK_INTERVAL_S)

    async def _ready(self) -> tuple[bool, dict]:
        detail: dict = {"wordpress": self._wp_ok, "database": False}
        if self._wp_error:
            detail["wordpress_error"] = self._wp_error
        try:
            await self.store.counts()
            detail["database"] = True
        except Exception as exc:
            detail["database_error"] = str(exc)
        return bool(detail["database"] and self._wp_ok), detail

    async def _metrics_body(self) -> bytes:
        return self.metrics.render(await self.store.counts())
