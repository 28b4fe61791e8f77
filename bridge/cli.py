"""The ``wp-sync-bridge`` command (also ``python -m bridge``).

Exit codes: 0 success, 1 a command's check failed, 2 usage error (64 for `serve`, see its help),
69 WordPress or a CRM unavailable, 75 the database is in use or newer than this bridge,
78 configuration error.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

import click

from bridge.errors import ConfigError
from bridge.settings import Settings, load_settings

EX_USAGE = 64
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78


def _settings(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        click.echo(f"configuration error: {exc.key}: {exc.problem}", err=True)
        sys.exit(EX_CONFIG)


def _run(coro: Any) -> Any:
    try:
        import uvloop  # optional: faster event loop when installed
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


@contextmanager
def _db(settings: Settings) -> Iterator[Any]:
    """A direct connection for operator commands (SQLite serialises them with a running daemon)."""
    from bridge.store.db import SchemaTooNew, connect, migrate

    conn = connect(settings.database.path)
    try:
        migrate(conn)
    except SchemaTooNew as exc:
        click.echo(str(exc), err=True)
        sys.exit(EX_TEMPFAIL)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _transaction(conn: Any) -> Iterator[None]:
    """One write transaction on an operator connection: committed, or rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _write(conn: Any, fn: Any, *args: Any) -> Any:
    with _transaction(conn):
        return fn(conn, *args)


config_option = click.option("--config", "-c", "config", type=click.Path(dir_okay=False), envvar="WPSB_CONFIG",
                             help="TOML configuration file (or $WPSB_CONFIG).")


@click.group()
@click.version_option(package_name="wp-sync-bridge")
def cli() -> None:
    """Keep WordPress users in sync with a CRM through WP Fusion-compatible webhooks."""


class _SysexitsCommand(click.Command):
    """A command whose usage errors exit 64 (EX_USAGE) rather than click's 2, so that systemd's
    RestartPreventExitStatus= can tell them from a crash."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.exit_code = EX_USAGE
            raise


@cli.command(cls=_SysexitsCommand)
@config_option
def serve(config: str | None) -> None:
    """Run the bridge: accept webhooks and process the queue until SIGTERM (SIGHUP reloads).

    Exit codes (sysexits.h): 64 usage, 66 the config file is missing or unreadable, 69 the listen
    address cannot be bound, 70 an unexpected error, 73 the database cannot be created or opened,
    75 the database is in use or newer than this bridge, 78 configuration error.
    """
    import os

    from bridge.app import Bridge
    from bridge.errors import CannotStart
    from bridge.logs import configure
    from bridge.store.db import SchemaTooNew
    from bridge.store.jobs import DatabaseLocked

    if config is not None and not os.access(config, os.R_OK):
        click.echo(f"cannot read the config file {config}: {'unreadable' if os.path.exists(config) else 'not found'}", err=True)
        sys.exit(EX_NOINPUT)
    settings = _settings(config)
    if not settings.has_access_keys():
        click.echo("configuration error: server.access_keys: at least one access key (here or in a connection's"
                   " access_keys) is required to serve", err=True)
        sys.exit(EX_CONFIG)
    if not settings.connections:
        click.echo("configuration error: connections: no CRM connection is configured; add a [connections.NAME]"
                   " table (see config.example.toml)", err=True)
        sys.exit(EX_CONFIG)
    try:
        redactor = configure(settings.log_level, settings.log_format)
    except ValueError as exc:
        click.echo(f"configuration error: log_level: {exc}", err=True)
        sys.exit(EX_CONFIG)
    try:
        _run(Bridge(settings, redactor, config_path=config).run())
    except (DatabaseLocked, SchemaTooNew) as exc:
        click.echo(str(exc), err=True)
        sys.exit(EX_TEMPFAIL)
    except CannotStart as exc:
        click.echo(f"cannot start: {exc}", err=True)
        sys.exit(EX_CANTCREAT if exc.what == "database" else EX_UNAVAILABLE)
    except Exception as exc:  # a bug: its own code, so it is restarted and noticed
        import structlog

        # Logged through the redactor: the traceback's text may hold a secret.
        structlog.get_logger("bridge.cli").error("bridge.crashed", error=type(exc).__name__, exc_info=exc)
        sys.exit(EX_SOFTWARE)


@cli.command()
@config_option
def check(config: str | None) -> None:
    """Validate the configuration and check that WordPress and its plugin answer."""
    from bridge.clients.wordpress import API_VERSION, make_wordpress

    settings = _settings(config)

    async def probe() -> dict:
        wp = make_wordpress(settings)
        try:
            status = await wp.status()
            status["roles"] = sorted(await wp.roles())
            return status
        finally:
            await wp.close()

    try:
        status = _run(probe())
    except Exception as exc:
        click.echo(f"WordPress at {settings.wordpress.url}: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    click.echo(f"configuration ok: {len(settings.connections)} connection(s): {', '.join(settings.connections) or '-'}")
    click.echo(f"WordPress {status.get('wordpress_version')} with wp-sync-bridge plugin {status.get('plugin_version')} "
               f"(api {status.get('api_version')}); roles: {', '.join(status['roles'])}")
    if int(status.get("api_version", 0)) != API_VERSION:
        click.echo(f"plugin api_version {status.get('api_version')} but this bridge needs {API_VERSION}", err=True)
        sys.exit(1)


@cli.group()
def jobs() -> None:
    """Inspect and requeue jobs."""


@jobs.command("list")
@config_option
@click.option("--status", type=click.Choice(["queued", "running", "done", "dead"]))
@click.option("--limit", default=20, show_default=True)
def jobs_list(config: str | None, status: str | None, limit: int) -> None:
    """List recent jobs, newest first."""
    from bridge.store import queue as q

    with _db(_settings(config)) as conn:
        for job in q.list_jobs(conn, status, limit):
            outcome = (job["outcome"] or {}).get("outcome", "")
            click.echo(f"{job['id']:>8}  {job['status']:<7} {job['connection']:<12} {job['action']:<11} "
                       f"attempts={job['attempts']} {outcome} {job['last_error'] or ''}".rstrip())


@jobs.command("show")
@config_option
@click.argument("job_id", type=int)
def jobs_show(config: str | None, job_id: int) -> None:
    """Show one job as JSON (its secret, if any, is never shown)."""
    from bridge.store import queue as q

    with _db(_settings(config)) as conn:
        job = q.get_job(conn, job_id)
    if job is None:
        click.echo(f"no job {job_id}", err=True)
        sys.exit(1)
    click.echo(json.dumps(job, indent=2, default=str))


@jobs.command("requeue")
@config_option
@click.argument("job_ids", type=int, nargs=-1, required=True)
def jobs_requeue(config: str | None, job_ids: tuple[int, ...]) -> None:
    """Give dead jobs a fresh start once the cause is fixed."""
    from bridge.store import queue as q

    with _db(_settings(config)) as conn:
        for job_id in job_ids:
            ok = _write(conn, q.requeue, time.time(), job_id)
            click.echo(f"job {job_id}: {'requeued' if ok else 'not dead, left alone'}")


@cli.group()
def rejected() -> None:
    """Deliveries that were refused after authentication, kept for replay."""


@rejected.command("list")
@config_option
@click.option("--limit", default=20, show_default=True)
def rejected_list(config: str | None, limit: int) -> None:
    """List rejected deliveries, newest first."""
    with _db(_settings(config)) as conn:
        for row in conn.execute("SELECT id, received_at, connection, status, reason, replayed_job FROM rejected ORDER BY id DESC LIMIT ?", (limit,)):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["received_at"]))
            replayed = f" replayed as job {row['replayed_job']}" if row["replayed_job"] else ""
            click.echo(f"{row['id']:>6}  {when}  {row['connection'] or '-':<12} {row['status']} {row['reason']}{replayed}")


@rejected.command("replay")
@config_option
@click.argument("ids", type=int, nargs=-1, required=True)
def rejected_replay(config: str | None, ids: tuple[int, ...]) -> None:
    """Parse rejected deliveries again with the current configuration and queue those that pass."""
    from bridge.replay import replay_rejected

    settings = _settings(config)
    failed = False
    with _db(settings) as conn:
        for rid in ids:
            with _transaction(conn):
                ok, message = replay_rejected(conn, settings, rid, time.time())
            failed |= not ok
            click.echo(f"rejected {rid}: {message}")
    sys.exit(1 if failed else 0)


@cli.command()
@config_option
@click.argument("connection")
def discover(config: str | None, connection: str) -> None:
    """Print every field seen in recent deliveries of CONNECTION and a mapping block to paste."""
    from bridge.core.discovery import discover as find_fields
    from bridge.core.discovery import mapping_block

    settings = _settings(config)
    if connection not in settings.connections:
        click.echo(f"unknown connection {connection!r}; configured: {', '.join(settings.connections) or 'none'}", err=True)
        sys.exit(EX_CONFIG)
    with _db(settings) as conn:
        rows = conn.execute("SELECT body FROM samples WHERE connection = ? ORDER BY id DESC", (connection,)).fetchall()
    if not rows:
        click.echo(f"no deliveries stored for {connection!r} yet: send a test event from the CRM, then run this again", err=True)
        sys.exit(1)
    fields = find_fields([json.loads(r["body"]) for r in rows])
    click.echo(f"{len(fields)} field(s) in {len(rows)} sample(s) of {connection!r}:")
    width = max(len(p) for p, _ in fields)
    for path, value in fields:
        click.echo(f"  {path:<{width}}  {json.dumps(value, ensure_ascii=False)[:60]}")
    spec = settings.connections[connection].spec()
    click.echo("\n# mapping to paste into the configuration (CRM path = WordPress field); edit as needed:")
    click.echo(mapping_block(connection, fields, spec.record_path))


@cli.group()
def webhooks() -> None:
    """Create and delete the CRM's webhook subscription through its API."""


def _webhook_errors(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from bridge.errors import AuthFailed, Permanent, Transient

        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"configuration error: {exc.key}: {exc.problem}", err=True)
            sys.exit(EX_CONFIG)
        except (AuthFailed, Permanent) as exc:
            click.echo(f"refused: {exc}", err=True)
            sys.exit(1)
        except Transient as exc:
            click.echo(f"unavailable: {exc}", err=True)
            sys.exit(EX_UNAVAILABLE)

    return wrapper


@webhooks.command("register")
@config_option
@click.argument("connection")
@click.option("--url", "public_url", help="The bridge's public base URL (default: server.public_url).")
@_webhook_errors
def webhooks_register(config: str | None, connection: str, public_url: str | None) -> None:
    """Create the subscription in the CRM (once) and keep its ID."""
    from bridge import webhooks as wh

    settings = _settings(config)
    url = wh.hook_url(settings, connection, public_url)
    with _db(settings) as conn, _transaction(conn):
        remote_id, created = _run(wh.register(conn, settings, connection, url))
    shown = url.split("?")[0]
    click.echo(f"{connection}: webhook {remote_id} {'created' if created else 'already registered'} → {shown}")


@webhooks.command("unregister")
@config_option
@click.argument("connection")
@_webhook_errors
def webhooks_unregister(config: str | None, connection: str) -> None:
    """Delete the stored subscription in the CRM (using its ID) and forget it."""
    from bridge import webhooks as wh

    settings = _settings(config)
    with _db(settings) as conn, _transaction(conn):
        removed = _run(wh.unregister(conn, settings, connection))
    click.echo(f"{connection}: " + (f"webhook {removed} deleted" if removed else "no webhook registered"))


@webhooks.command("list")
@config_option
@click.argument("connection")
@_webhook_errors
def webhooks_list(config: str | None, connection: str) -> None:
    """Show the stored subscription and, when the CRM can list them, what the CRM has."""
    from bridge import webhooks as wh

    settings = _settings(config)
    with _db(settings) as conn:
        row = wh.stored(conn, connection)
    click.echo(f"stored: {row['remote_id']} → {row['url']}" if row else "stored: none")
    remote = _run(wh.remote_list(settings, connection))
    click.echo("in the CRM: " + ("(the connector cannot list webhooks)" if remote is None else ", ".join(remote) or "none"))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="wp-sync-bridge")
