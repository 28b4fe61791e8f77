"""The bridge's lifecycle: start in order (logging → database → HTTP sessions → workers → web
server), stop in reverse, drain on SIGTERM within the grace period.

Under systemd (``Type=notify``) it tells the service manager READY=1 once the port is bound, a
STATUS= line as the queue changes, WATCHDOG=1 while the event loop and the worker loops are alive,
and STOPPING=1; SIGHUP re-reads the configuration file and applies what can change while running
(``bridge.reload``), keeping the running configuration when the new one is invalid."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from bridge.batching import Traffic
from bridge.clients.crm import CrmClient
from bridge.clients.wordpress import API_VERSION, make_wordpress
from bridge.errors import CannotStart, ConfigError, RemoteError
from bridge.logs import Redactor, set_level
from bridge.metrics import Metrics
from bridge.reload import apply_reloadable
from bridge.settings import Settings, load_settings
from bridge.store import queue as q
from bridge.store.backends import open_store
from bridge.store.jobs import JobStore
from bridge.store.pgdb import PostgresUnavailable
from bridge.sync import SyncContext
from bridge.systemd import Notifier
from bridge.tasks import LoopHealth, TaskGroup, guarded
from bridge.web.intake import Intake
from bridge.web.edge import make_runner
from bridge.web.server import make_app, make_metrics_app
from bridge.worker import Worker

log = structlog.get_logger("bridge.app")
WP_CHECK_INTERVAL_S = 30.0
STATUS_INTERVAL_S = 5.0
CRM_CHECK_INTERVAL_S = 60.0
# /metrics, /readyz and STATUS= count the queue at most this often (a count reads an index: not
# free at 100k jobs).
COUNTS_MAX_AGE_S = 5.0


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret value, for the log redactor."""
    return settings.secret_values()


class Bridge:
    """One running bridge. ``await start()``, then ``await stop()`` (or ``run()`` until a signal)."""

    def __init__(self, settings: Settings, redactor: Redactor | None = None,
                 config_path: str | Path | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.redactor = redactor
        self.config_path = config_path  # re-read on SIGHUP
        self.notifier = notifier or Notifier()
        self.metrics = Metrics(settings.connections)
        self.store: JobStore | None = None
        self.worker: Worker | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.metrics_runner: web.AppRunner | None = None
        self.metrics_port: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._wordpress = None
        self._background = TaskGroup()
        self._wp_ok: bool | None = None
        self._wp_error: str | None = None
        self._stopped = asyncio.Event()
        self._intake: Intake | None = None
        self._crm_args: tuple = ()
        self._retired: list = []  # WordPress clients replaced by a reload, closed at stop
        self._reload_lock = asyncio.Lock()
        self._crm_state: dict[str, tuple[bool, float]] = {}  # connection → (up, when last heard of)
        self._stopping = asyncio.Event()
        self.health = LoopHealth()
        self._oldest: float | None = None
        self._oldest_at = float("-inf")

    async def start(self) -> None:
        """Open the database, the HTTP sessions, start workers and the web server."""
        s = self.settings
        if self.redactor is not None:
            self.redactor.add(secrets_of(s))
        try:
            self.store = open_store(s.database)
        except (OSError, sqlite3.Error, PostgresUnavailable) as exc:
            raise CannotStart("database", f"{s.database.where}: {exc}") from None
        self._session = aiohttp.ClientSession(headers={"User-Agent": "wp-sync-bridge"})
        self._wordpress = make_wordpress(s)
        self._crm_args = (self._session, s.worker, s.wordpress.timeout_s)
        crms = {name: CrmClient(name, conn, *self._crm_args, observer=self._crm_seen)
                for name, conn in s.connections.items()}
        ctx = SyncContext(s, self._wordpress, crms, self.store)
        traffic = Traffic()
        self.worker = Worker(ctx, self.store, self.metrics, self.health, traffic=traffic)
        await self.worker.start()
        if s.database.backend == "postgresql":
            # Other bridges' deliveries wake this one's worker (NOTIFY), between its own polls.
            self._background.spawn(guarded("database_listen", lambda: self.store.watch(self.worker.notify),
                                           self.health, self._stopping, max_s=s.worker.loop_backoff_max_s),
                                   "database.listen")
        self._background.spawn(guarded("wordpress_check", self._check_wordpress, self.health, self._stopping,
                                       max_s=s.worker.loop_backoff_max_s), "wordpress.check")
        if any(c.probe is not None for c in (crm.spec for crm in crms.values())):
            self._background.spawn(self._watch_crms(crms), "crm.check")
        self._intake = intake = Intake(s, self.store, self.metrics, self.worker.notify, traffic=traffic)
        token = s.server.metrics_token.get_secret_value() if s.server.metrics_token else None
        separate = s.server.metrics_port is not None
        app = make_app(intake, self._ready, None if separate else self._metrics_body, s.server.max_body_bytes,
                       token)
        self.runner = make_runner(app, s.server, self.metrics, handle_signals=False, shutdown_timeout=5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, s.server.host, s.server.port, backlog=s.server.backlog)
        try:
            await site.start()
        except OSError as exc:
            raise CannotStart("listen", f"{s.server.host}:{s.server.port}: {exc.strerror or exc}") from None
        self.port = self.runner.addresses[0][1]
        if separate:
            await self._start_metrics(token)
        log.info("bridge.started", host=s.server.host, port=self.port, connections=sorted(s.connections),
                 transport=s.wordpress.transport, database=s.database.where)
        self.notifier.notify(READY=1, STATUS=await self._status_text())
        self._background.spawn(self._service_manager(), "systemd.status")

    async def stop(self) -> None:
        """Stop accepting, drain running jobs within the grace period, close everything."""
        started = time.monotonic()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        if self.worker is not None:
            await self.worker.stop(self.settings.worker.shutdown_grace_s)
        self._stopping.set()
        await self._background.cancel()
        for client in [*self._retired, self._wordpress]:
            if client is not None:
                await client.close()
        if self._session is not None:
            await self._session.close()
        if self.store is not None:
            await self.store.close_listener()
            self.store.close()
        log.info("bridge.stopped", took_s=round(time.monotonic() - started, 3))
        self._stopped.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT (SIGHUP reloads), then stop. A failed start still
        closes what was opened before it raises."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Handled from the first instant: the default action of SIGHUP would kill the daemon.
        loop.add_signal_handler(signal.SIGHUP, lambda: self._background.spawn(self.reload(), "config.reload"))
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        await stop.wait()
        log.info("bridge.stopping", grace_s=self.settings.worker.shutdown_grace_s)
        self.notifier.notify(STOPPING=1, STATUS="stopping: finishing running jobs")
        await self.stop()

    async def reload(self) -> bool:
        """Re-read the configuration file and apply the access keys, the log level and the
        WordPress and CRM secrets; an invalid file is logged and the running configuration kept.
        Other changed keys are named (``config.reload_needs_restart``), not applied."""
        if self.store is None or self._intake is None:
            log.warning("config.reload_ignored", reason="not started yet")
            return False
        async with self._reload_lock:
            self.notifier.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
            try:
                return await self._reload()
            finally:
                self.notifier.notify(READY=1, STATUS=await self._status_text())

    async def _reload(self) -> bool:
        try:
            new = load_settings(self.config_path)
            if not new.has_access_keys():
                raise ConfigError("server.access_keys", "at least one access key is required to serve")
            set_level(new.log_level)
        except ConfigError as exc:
            log.error("config.reload_failed", key=exc.key, problem=exc.problem, kept="running configuration")
            return False
        except ValueError as exc:
            log.error("config.reload_failed", key="log_level", problem=str(exc), kept="running configuration")
            return False
        s = self.settings
        if self.redactor is not None:
            self.redactor.add(secrets_of(new))  # before anything could print them
        changes = apply_reloadable(s, new)
        self._intake.keys = [k.get_secret_value() for k in s.server.access_keys]
        self._intake.connection_keys = {name: [k.get_secret_value() for k in conn.access_keys]
                                        for name, conn in s.connections.items()}
        self._intake.log = structlog.get_logger("bridge.intake").bind()  # bound loggers keep their level
        self.worker.log = structlog.get_logger("bridge.worker").bind()
        ctx = self.worker.ctx
        for name in changes.connections_changed():
            ctx.crms[name] = CrmClient(name, s.connections[name], *self._crm_args, observer=self._crm_seen)
        if changes.wordpress_changed:
            self._retired.append(self._wordpress)  # running jobs may still use it
            self._wordpress = ctx.wordpress = make_wordpress(s)
        log.info("config.reloaded", applied=changes.applied, log_level=s.log_level)
        if changes.needs_restart:
            log.warning("config.reload_needs_restart", keys=changes.needs_restart)
        return True

    async def _status_text(self) -> str:
        where = f"serving on {self.settings.server.host}:{self.port}"
        try:
            async with asyncio.timeout(STATUS_INTERVAL_S):
                counts = await self.store.cached_counts(COUNTS_MAX_AGE_S)
        except Exception as exc:  # the status line says so; the loop goes on
            return f"{where}, queue unreadable: {type(exc).__name__}"
        status = f"{where}, {counts['queued']} queued, {counts['running']} running, {counts['dead']} dead"
        return status + ("; WordPress unreachable" if self._wp_ok is False else "")

    async def _service_manager(self) -> None:
        """STATUS= as the queue changes; WATCHDOG=1 only while the worker loops are alive (this
        task itself runs on the event loop, so a blocked loop sends nothing either)."""
        if not self.notifier.enabled:
            return
        watchdog_s = self.notifier.watchdog_interval_s
        interval_s = min(STATUS_INTERVAL_S, watchdog_s or STATUS_INTERVAL_S)
        last_status, last_status_at = "", 0.0
        while True:
            if watchdog_s is not None and self.worker is not None and self.worker.loops_alive:
                self.notifier.notify(WATCHDOG=1)
            if time.monotonic() - last_status_at >= STATUS_INTERVAL_S:
                status = await self._status_text()
                if status != last_status:
                    self.notifier.notify(STATUS=status)
                last_status, last_status_at = status, time.monotonic()
            await asyncio.sleep(interval_s)

    async def _check_wordpress(self) -> None:
        """One round of the WordPress watch (runs behind ``guarded``): status, then the pause."""
        try:
            status = await self._wordpress.status()
            api = int(status.get("api_version", 0))
            if api != API_VERSION:
                self._wp_ok, self._wp_error = False, f"plugin api_version {api}, bridge needs {API_VERSION}"
            else:
                if self._wp_ok is not True:
                    log.info("wordpress.reachable", plugin=status.get("plugin_version"),
                             wordpress=status.get("wordpress_version"))
                self._wp_ok, self._wp_error = True, None
        except Exception as exc:  # readiness reports it; the queue keeps jobs meanwhile
            if self._wp_ok is not False:
                log.warning("wordpress.unreachable", error=str(exc))
            self._wp_ok, self._wp_error = False, str(exc)
        await asyncio.sleep(WP_CHECK_INTERVAL_S)

    async def _start_metrics(self, token: str | None) -> None:
        """``/metrics`` on ``server.metrics_host:metrics_port`` (default host: ``server.host``)."""
        s = self.settings.server
        # Guarded like the webhook listener (bridge.web.edge): timeouts, the cap, no request line echoed.
        self.metrics_runner = make_runner(make_metrics_app(self._metrics_body, token), s, None,
                                          handle_signals=False)
        await self.metrics_runner.setup()
        host = s.metrics_host or s.host
        try:
            await web.TCPSite(self.metrics_runner, host, s.metrics_port).start()
        except OSError as exc:
            raise CannotStart("listen", f"metrics {host}:{s.metrics_port}: {exc.strerror or exc}") from None
        self.metrics_port = self.metrics_runner.addresses[0][1]
        log.info("metrics.listening", host=host, port=self.metrics_port)

    def _crm_seen(self, connection: str, up: bool) -> None:
        """Every CRM request's outcome feeds ``wpsb_crm_up``; a change is logged once."""
        before = self._crm_state.get(connection)
        if before is not None and before[0] != up:
            (log.info if up else log.warning)("crm.reachable" if up else "crm.unreachable",
                                              connection=connection)
        self._crm_state[connection] = (up, time.monotonic())
        self.metrics.set_crm_up(connection, up)

    async def _watch_crms(self, crms: dict) -> None:
        """A connection the jobs have not used for a while is asked its probe request (a read, never
        a write), so ``wpsb_crm_up`` stays true to life when no deliveries come."""
        while True:
            await asyncio.sleep(CRM_CHECK_INTERVAL_S)
            for name, crm in crms.items():
                last = self._crm_state.get(name)
                if crm.spec.probe is None or (last and time.monotonic() - last[1] < CRM_CHECK_INTERVAL_S):
                    continue
                try:
                    await crm.request(crm.spec.probe, {})
                except RemoteError:
                    pass  # recorded by the observer; the next round asks again
                except Exception as exc:  # e.g. a template hole: doctor names it
                    log.warning("crm.probe_failed", connection=name, error=str(exc))

    async def _ready(self) -> tuple[bool, dict]:
        """Ready: WordPress answered at the last check, the database reads, and every background
        loop's last round (claims, result writes, maintenance, the WordPress watch) went through.
        Reads use the store's read-only connection: a scrape never waits behind group commits."""
        detail: dict = {"wordpress": self._wp_ok, "database": False, "loops": dict(self.health.healthy)}
        if self._wp_error:
            detail["wordpress_error"] = self._wp_error
        if self.health.errors:
            detail["loop_errors"] = dict(self.health.errors)
        try:
            await self.store.read(q.ping)
            detail["database"] = True
        except Exception as exc:
            detail["database_error"] = str(exc)
        return bool(detail["database"] and self._wp_ok and self.health.all_ok), detail

    async def _metrics_body(self) -> bytes:
        from bridge.store.operator import oldest_queued_at

        self.metrics.set_wordpress_up(self._wp_ok)
        if time.monotonic() - self._oldest_at > COUNTS_MAX_AGE_S:
            # The reader connection: a scrape never waits behind group commits, and at most once per
            # COUNTS_MAX_AGE_S.
            self._oldest, self._oldest_at = await self.store.read(oldest_queued_at), time.monotonic()
        return self.metrics.render(await self.store.cached_counts(COUNTS_MAX_AGE_S), self._oldest,
                                   self.health.healthy)
