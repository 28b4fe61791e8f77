"""``wp-sync-bridge store copy``: move the queue from a SQLite file to PostgreSQL, to run several
bridges on one queue (what moves: ``bridge.store.transfer``)."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import click

from bridge.cli_common import EX_FAILED, EX_NOINPUT, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, fail


@click.group()
def store() -> None:
    """Move the queue between stores."""


@store.command("copy")
@click.option("--from", "source", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The SQLite database file (database.path); no bridge may run on it.")
@click.option("--to", "target", envvar="WPSB_DATABASE__URL", required=True,
              help="postgresql://USER[:PASSWORD]@HOST/DBNAME (or $WPSB_DATABASE__URL, which keeps the "
                   "password out of the process list).")
def store_copy(source: Path, target: str) -> None:
    """Copy waiting and dead jobs, dedupe keys, webhooks, rejected deliveries and samples from a
    SQLite file to an empty PostgreSQL database (created schema included), in one transaction.

    The bridge on SOURCE must be stopped (refused otherwise: exit 75). The file is left as it was.
    Then set database.url in the configuration and start the bridges; never start a bridge on the
    old file again (its jobs would run twice)."""
    from bridge.store import pgdb, transfer
    from bridge.store.db import SchemaTooNew
    from bridge.store.operator import DatabaseMissing, SchemaTooOld, open_existing

    if not pgdb.is_url(target):
        fail("--to: must be a postgresql:// URL", EX_USAGE)
    shown = pgdb.shown_url(target)
    lock_fd = _stop_bridges_starting(source)
    try:
        with open_existing(source) as src:
            total = transfer.jobs_to_move(src)
            dst = pgdb.connect(target, application_name="wp-sync-bridge store copy")
            try:
                pgdb.migrate(dst)
                with click.progressbar(length=total, label="copy jobs", file=sys.stderr,
                                       show_pos=True) as bar:
                    report = transfer.copy(src, dst, bar.update)
            finally:
                dst.close()
    except DatabaseMissing:
        fail(f"--from: no database at {source}", EX_NOINPUT)
    except (SchemaTooNew, SchemaTooOld) as exc:
        fail(f"--from: {exc}", EX_TEMPFAIL)
    except pgdb.PostgresUnavailable as exc:
        fail(f"--to: {shown}: {exc}", EX_UNAVAILABLE)
    except transfer.TargetNotEmpty as exc:
        fail(f"--to: {shown}: {exc}", EX_FAILED)
    finally:
        os.close(lock_fd)
    jobs = ", ".join(f"{n} {status}" for status, n in sorted(report.jobs.items())) or "no jobs"
    if report.was_running:
        jobs += f" ({report.was_running} of them left running by the stopped bridge, queued again)"
    rows = ", ".join(f"{n} {table}" for table, n in report.rows.items())
    click.echo(f"copied to {shown}: {jobs} ({rows})")
    click.echo("next: set [database] url in the configuration, start the bridges; do not start a bridge on "
               f"{source} again")


def _stop_bridges_starting(source: Path) -> int:
    """Hold the file's bridge lock for the copy (a running bridge holds it: exit 75)."""
    if not source.is_file():
        fail(f"--from: no database at {source}", EX_NOINPUT)
    fd = os.open(f"{source}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        fail(f"--from: a bridge is running on {source}; stop it first (systemctl stop wp-sync-bridge)",
             EX_TEMPFAIL)
    return fd
