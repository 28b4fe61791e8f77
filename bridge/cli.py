"""The ``wp-sync-bridge`` command (also ``python -m bridge``).

Exit codes (sysexits): 0 success, 1 a command's check failed, 2 usage error (click's; 64 for
``serve``), 66 the database (or, for ``serve``, the config file) does not exist, 70 an unexpected
error in ``serve``, 69 WordPress or a CRM unavailable, 73 an output file cannot be
written, 75 the database is in use or its schema is not this bridge's, 78 configuration error.

Reading commands open the database read-only and never create or migrate it; only ``serve`` does
(as the service user). Shell completion: ``eval "$(_WP_SYNC_BRIDGE_COMPLETE=bash_source
wp-sync-bridge)"`` (zsh_source, fish_source for the other shells; docs/runbook.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bridge.cli_common import (EX_CANTCREAT, EX_CONFIG, EX_NOINPUT, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE,
                               EX_USAGE, config_option, database, fail, load, run_async, scrub)
from bridge.cli_jobs import contacts, jobs, rejected
from bridge.cli_store import store
from bridge.errors import ConfigError
from bridge.store import operator
from bridge.store.operator import transaction

_run = run_async  # the name the commands below have always used


@click.group()
@click.version_option(package_name="wp-sync-bridge")
def cli() -> None:
    """Keep WordPress users in sync with a CRM through WP Fusion-compatible webhooks."""


cli.add_command(jobs)
cli.add_command(contacts)
cli.add_command(rejected)
cli.add_command(store)


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
        fail(f"cannot read the config file {config}: "
             f"{'unreadable' if os.path.exists(config) else 'not found'}",
             EX_NOINPUT)
    settings = load(config, strict=True)
    if not settings.has_access_keys():
        click.echo("configuration error: server.access_keys: at least one access key"
                   " (here or in a connection's"
                   " access_keys) is required to serve", err=True)
        sys.exit(EX_CONFIG)
    if not settings.connections:
        click.echo("configuration error: connections: no CRM connection is configured;"
                   " add a [connections.NAME]"
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


def _doctor(config: str | None, service_user: str | None, offline: bool, as_json: bool) -> None:
    from bridge import doctor
    from bridge.config_report import collect

    findings = doctor.run(config, service_user=service_user, offline=offline)
    settings = collect(config, with_lint=False).settings
    text = doctor.as_json(findings) if as_json else doctor.render(findings, color=sys.stdout.isatty())
    click.echo(scrub(text, settings))
    sys.exit(doctor.exit_code(findings))


def _doctor_command(name: str, help_text: str) -> click.Command:
    @click.command(name, help=help_text)
    @config_option
    @click.option("--service-user",
                  help="The account the service runs as (default: wp-sync-bridge, if it exists).")
    @click.option("--offline", is_flag=True, help="Leave out WordPress and the CRMs (no network).")
    @click.option("--json", "as_json", is_flag=True, help="The findings as JSON.")
    def command(config: str | None, service_user: str | None, offline: bool, as_json: bool) -> None:
        _doctor(config, service_user, offline, as_json)

    return command


cli.add_command(_doctor_command("doctor",
                                "Check everything at once (configuration, database, listen address, "
                                "WordPress, each CRM) and say how to fix each problem. Exit 0 when nothing "
                                "is wrong."))
cli.add_command(_doctor_command("check", "The same as doctor (its old name)."))


@cli.command()
@config_option
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite TARGET if it exists.")
def backup(config: str | None, target: Path, force: bool) -> None:
    """Copy the database to TARGET with SQLite's online backup (safe while the bridge runs)."""
    from bridge.store.operator import backup as copy_db

    settings = load(config)
    if settings.database.backend == "postgresql":
        fail("database.url is PostgreSQL: back it up with the database's own tools, e.g. "
             "`pg_dump --format=custom DBNAME > bridge.dump` (this command copies a SQLite file)", EX_USAGE)
    if target.exists() and not force:
        fail(f"{target} exists; pass --force to overwrite it", EX_CANTCREAT)
    if target.resolve() == Path(settings.database.path).resolve():
        fail("the target is the database itself", EX_CANTCREAT)
    tmp = target.with_name(target.name + ".partial")
    try:
        with database(settings) as conn:
            with click.progressbar(length=100, label="backup", file=sys.stderr) as bar:
                def progress(done: int, total: int) -> None:
                    bar.update(int(100 * done / max(total, 1)) - bar.pos)

                copy_db(conn, tmp, progress)
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        fail(f"cannot write {target}: {exc.strerror or exc}", EX_CANTCREAT)
    click.echo(f"backup written to {target} ({target.stat().st_size} bytes)")


@cli.command("install-plugin")
@click.argument("wp_root", type=click.Path(file_okay=False, path_type=Path))
def install_plugin(wp_root: Path) -> None:
    """Copy the companion must-use plugin into WP_ROOT/wp-content/mu-plugins/."""
    from bridge.packaged import NotWordPress, install_plugin as install

    try:
        target, replaced = install(wp_root)
    except NotWordPress as exc:
        fail(str(exc), EX_NOINPUT)
    except OSError as exc:
        fail(f"cannot write into {wp_root}: {exc.strerror or exc}", EX_CANTCREAT)
    click.echo(f"{'updated' if replaced else 'installed'} {target}")


@cli.command("print-file")
@click.argument("name", type=click.Choice(["config", "unit", "plugin"]))
def print_file(name: str) -> None:
    """Print a file the package carries: the example configuration, the systemd unit or the plugin."""
    from bridge.packaged import data_text

    click.echo(data_text(name), nl=False)


@cli.command()
@config_option
@click.argument("connection")
def discover(config: str | None, connection: str) -> None:
    """Print every field seen in recent deliveries of CONNECTION and a mapping block to paste."""
    from bridge.core.discovery import discover as find_fields
    from bridge.core.discovery import mapping_block

    settings = load(config)
    if connection not in settings.connections:
        fail(f"unknown connection {connection!r}; configured: {', '.join(settings.connections) or 'none'}",
             EX_CONFIG)
    with database(settings) as conn:
        rows = operator.samples(conn, connection)
    if not rows:
        click.echo(f"no deliveries stored for {connection!r} yet: "
                   "send a test event from the CRM, then run this "
                   "again", err=True)
        sys.exit(1)
    fields = find_fields([json.loads(body) for body in rows])
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

    settings = load(config)
    url = wh.hook_url(settings, connection, public_url)
    with database(settings, write=True) as conn, transaction(conn):
        remote_id, created = _run(wh.register(conn, settings, connection, url))
    shown = url.split("?")[0]
    click.echo(f"{connection}: webhook {remote_id} "
               f"{'created' if created else 'already registered'} → {shown}")


@webhooks.command("unregister")
@config_option
@click.argument("connection")
@_webhook_errors
def webhooks_unregister(config: str | None, connection: str) -> None:
    """Delete the stored subscription in the CRM (using its ID) and forget it."""
    from bridge import webhooks as wh

    settings = load(config)
    with database(settings, write=True) as conn, transaction(conn):
        removed = _run(wh.unregister(conn, settings, connection))
    click.echo(f"{connection}: " + (f"webhook {removed} deleted" if removed else "no webhook registered"))


@webhooks.command("list")
@config_option
@click.argument("connection")
@_webhook_errors
def webhooks_list(config: str | None, connection: str) -> None:
    """Show the stored subscription and, when the CRM can list them, what the CRM has."""
    from bridge import webhooks as wh

    settings = load(config)
    with database(settings) as conn:
        row = wh.stored(conn, connection)
    click.echo(f"stored: {row['remote_id']} → {row['url']}" if row else "stored: none")
    remote = _run(wh.remote_list(settings, connection))
    listed = "(the connector cannot list webhooks)" if remote is None else ", ".join(remote) or "none"
    click.echo(f"in the CRM: {listed}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="wp-sync-bridge")
