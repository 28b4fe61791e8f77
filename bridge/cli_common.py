"""What every operator command shares: exit codes (sysexits), reading the settings with every
problem reported, opening the existing database, and scrubbing secrets from what is printed."""

from __future__ import annotations

import asyncio
import sys
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn

import click

from bridge.settings import Settings

EX_FAILED = 1
EX_USAGE = 64         # serve's usage errors (systemd tells them from a crash)
EX_NOINPUT = 66       # the database (or another input file) does not exist
EX_UNAVAILABLE = 69   # WordPress or a CRM cannot be reached
EX_SOFTWARE = 70      # serve: an unexpected error (a bug)
EX_CANTCREAT = 73     # an output file cannot be written
EX_TEMPFAIL = 75      # the database is in use, or its schema is not this bridge's
EX_CONFIG = 78        # the configuration is wrong: restarting will not help

config_option = click.option("--config", "-c", "config", type=click.Path(dir_okay=False),
                             envvar="WPSB_CONFIG",
                             help="TOML configuration file (or $WPSB_CONFIG).")


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` on stderr and exit with ``code``."""
    click.echo(message, err=True)
    sys.exit(code)


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when installed, else asyncio."""
    try:
        import uvloop  # optional: faster event loop when installed
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def load(config: str | None, strict: bool = False) -> Settings:
    """The settings, or exit 78 listing every problem (with its key and source). ``strict`` (serve)
    also refuses values that parse but cannot work (``bridge.config_lint``)."""
    from bridge.config_report import collect

    report = collect(config, with_lint=strict)
    problems = [p for p in report.problems if p.severity == "problem"]
    if problems or report.settings is None:
        for p in problems:
            click.echo(f"configuration error: {p.key}: {p.message} [{p.source}]", err=True)
        click.echo("run `wp-sync-bridge doctor` for the whole picture and how to fix each", err=True)
        sys.exit(EX_CONFIG)
    return report.settings


@contextmanager
def database(settings: Settings, write: bool = False) -> Iterator[Any]:
    """The existing database (SQLite at ``database.path``, or PostgreSQL at ``database.url``),
    read-only unless ``write``; exits 66 when it is missing (naming the key), 69 when PostgreSQL
    cannot be reached, and 75 when its schema is not this bridge's."""
    from bridge.store.db import SchemaTooNew
    from bridge.store.operator import (DatabaseMissing, NotABridgeDatabase, SchemaTooOld, open_existing,
                                       open_existing_url)
    from bridge.store.pgdb import PostgresUnavailable

    db = settings.database
    try:
        if db.backend == "postgresql":
            opened = open_existing_url(db.url.get_secret_value(), write=write, need_latest=write)
        else:
            opened = open_existing(db.path, write=write, need_latest=write)
        with opened as conn:
            yield conn
    except (DatabaseMissing, NotABridgeDatabase) as exc:
        fail(str(exc), EX_NOINPUT)
    except PostgresUnavailable as exc:
        fail(f"database.url: {db.where}: {scrub(str(exc), settings)}", EX_UNAVAILABLE)
    except (SchemaTooNew, SchemaTooOld) as exc:
        fail(str(exc), EX_TEMPFAIL)


def shown(value: Any, settings: Settings) -> Any:
    """What an operator command may print of a job, a payload or a line: secret-named fields masked
    at any depth (a payload's ``user_pass``, ``token``, ``api_key``...) and every configured secret
    scrubbed from the text (an ``access_key=...`` in a URL too)."""
    from bridge.logs import Redactor, mask_secret_fields

    return Redactor(settings.secret_values()).scrub(mask_secret_fields(value))


def scrub(text: str, settings: Settings | None) -> str:
    """``text`` with every configured secret value masked (the last guard before printing)."""
    if settings is None:
        return text
    from bridge.app import secrets_of

    for secret in sorted(secrets_of(settings), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
