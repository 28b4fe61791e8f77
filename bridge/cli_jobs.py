"""Operator commands on the queue: ``jobs``, ``contacts history`` and ``rejected``.

Listing commands open the database read-only. Bulk commands act one job per short transaction
(a running daemon keeps taking deliveries meanwhile), show a progress bar on a terminal and end
with a summary; a requeued job keeps its failure history (``job_history``, migration 0005).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from bridge.cli_common import EX_FAILED, config_option, database, fail, load, shown
from bridge.cli_format import iso, parse_since, when
from bridge.store import operator as op
from bridge.store import queue as q

STATUSES = ("queued", "running", "done", "dead")


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _email(job: dict[str, Any]) -> str:
    return str((job.get("payload") or {}).get("email") or "-")


def _line(job: dict[str, Any]) -> str:
    outcome = (job["outcome"] or {}).get("outcome", "")
    error = f" error: {job['last_error']}" if job["last_error"] and job["status"] != "done" else ""
    return (f"{job['id']:>8}  {job['status']:<7}  {job['connection']:<12} {job['action']:<11} "
            f"{_email(job):<28} "
            f"attempts={job['attempts']}  {when(job['created_at'])}  {outcome}{error}").rstrip()


def _as_json(job: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out = {k: v for k, v in job.items() if k != "payload"}
    out["email"] = _email(job)
    for key in ("created_at", "updated_at", "run_at", "lease_until"):
        if key in out:
            out[key] = iso(out[key])
    if history is not None:
        out["history"] = [{**h, "at": iso(h["at"])} for h in history]
    return out


@click.group()
def jobs() -> None:
    """Inspect and requeue jobs."""


@jobs.command("list")
@config_option
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--connection", help="Only this connection's jobs.")
@click.option("--contact", "--email", "contact", help="Only jobs of this contact (email or CRM contact ID).")
@click.option("--since", help="Only jobs created since: 30m, 2h, 7d, or a date such as 2026-11-30 (UTC).")
@click.option("--limit", default=20, show_default=True, help="At most this many (0: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, times in ISO 8601 UTC.")
def jobs_list(config: str | None, status: str | None, connection: str | None, contact: str | None,
              since: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    after = _since(since)
    settings = load(config)
    with database(settings) as conn:
        found = op.find_jobs(conn, status=status, connection=connection, contact=contact, since=after,
                             limit=limit or None)
    found = shown(found, settings)
    if as_json:
        click.echo(json.dumps([_as_json(j) for j in found], indent=2, default=str))
        return
    if not found:
        click.echo("no jobs match", err=True)
    for job in found:
        click.echo(_line(job))


@jobs.command("show")
@config_option
@click.argument("job_id", type=int)
def jobs_show(config: str | None, job_id: int) -> None:
    """Show one job as JSON, with its failure history (its secret, if any, is never shown)."""
    settings = load(config)
    with database(settings) as conn:
        job = q.get_job(conn, job_id)
        history = op.history(conn, [job_id]).get(job_id, []) if job else []
    if job is None:
        fail(f"no job {job_id}", EX_FAILED)
    out = {**job, "history": [{**h, "at": iso(h["at"])} for h in history]}
    for key in ("created_at", "updated_at", "run_at", "lease_until"):
        out[key] = iso(out[key])
    click.echo(json.dumps(shown(out, settings), indent=2, default=str))


def _bulk(label: str, items: list[Any], act: Any) -> dict[str, int]:
    """Run ``act(item) -> result name`` over items with a progress bar; the count of each result."""
    tally: dict[str, int] = {}
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
        for item in bar:
            result = act(item)
            tally[result] = tally.get(result, 0) + 1
    return tally


@jobs.command("requeue")
@config_option
@click.argument("job_ids", type=int, nargs=-1)
@click.option("--status", type=click.Choice(["dead"]),
              help="Requeue every job in this state (with the filters).")
@click.option("--connection", help="With --status: only this connection's jobs.")
@click.option("--since", help="With --status: only jobs created since (30m, 2h, 7d, 2026-11-30).")
def jobs_requeue(config: str | None, job_ids: tuple[int, ...], status: str | None, connection: str | None,
                 since: str | None) -> None:
    """Give dead jobs a fresh start once the cause is fixed: JOB_IDS, or all with --status dead.

    The job's failure history is kept (jobs show ID)."""
    if bool(job_ids) == bool(status):
        raise click.UsageError("give job IDs, or --status dead [--connection NAME] [--since WHEN]")
    if job_ids and (connection or since):
        raise click.UsageError("--connection and --since go with --status")
    after = _since(since)
    with database(load(config), write=True) as conn:
        ids = list(job_ids) or op.job_ids(conn, status=status, connection=connection, since=after)

        def requeue(job_id: int) -> str:
            with op.transaction(conn):
                return "requeued" if q.requeue(conn, time.time(), job_id) else "left alone"

        if job_ids:
            tally: dict[str, int] = {}
            for job_id in ids:
                result = requeue(job_id)
                tally[result] = tally.get(result, 0) + 1
                click.echo(f"job {job_id}: {'requeued' if result == 'requeued' else 'not dead, left alone'}")
        else:
            tally = _bulk("requeue", ids, requeue)
    summary = ", ".join(f"{n} {what}" for what, n in sorted(tally.items())) or "no job matched"
    click.echo(f"summary: {summary}")


@click.group()
def contacts() -> None:
    """A contact's jobs."""


@contacts.command("history")
@config_option
@click.argument("contact")
@click.option("--connection", help="Only this connection's jobs.")
@click.option("--json", "as_json", is_flag=True, help="JSON, each job with its failure history.")
def contacts_history(config: str | None, contact: str, connection: str | None, as_json: bool) -> None:
    """Every job of CONTACT (an email or a CRM contact ID), oldest first, with failures and requeues."""
    settings = load(config)
    with database(settings) as conn:
        found = op.find_jobs(conn, contact=contact, connection=connection, limit=None, oldest_first=True)
        history = op.history(conn, [j["id"] for j in found])
    found, history = shown(found, settings), {job_id: shown(h, settings) for job_id, h in history.items()}
    if as_json:
        click.echo(json.dumps([_as_json(j, history.get(j["id"], [])) for j in found], indent=2, default=str))
        return
    if not found:
        fail(f"no jobs for {contact!r}", EX_FAILED)
    for job in found:
        click.echo(_line(job))
        for h in history.get(job["id"], []):
            error = f": {h['error']}" if h["error"] else ""
            click.echo(f"{'':>10}{when(h['at'])}  {h['event']} after attempt {h['attempt']}{error}")


@click.group()
def rejected() -> None:
    """Deliveries that were refused after authentication, kept for replay."""


@rejected.command("list")
@config_option
@click.option("--limit", default=20, show_default=True, help="At most this many (0: all).")
def rejected_list(config: str | None, limit: int) -> None:
    """List rejected deliveries, newest first."""
    settings = load(config)
    with database(settings) as conn:
        rows = op.rejected(conn, limit=limit or None)
    for row in rows:
        replayed = f" replayed as job {row['replayed_job']}" if row["replayed_job"] else ""
        click.echo(shown(f"{row['id']:>6}  {when(row['received_at'])}  {row['connection'] or '-':<12} "
                         f"{row['status']} {row['reason']}{replayed}", settings))


@rejected.command("replay")
@config_option
@click.argument("ids", type=int, nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Every rejected delivery not replayed yet.")
def rejected_replay(config: str | None, ids: tuple[int, ...], replay_all: bool) -> None:
    """Parse rejected deliveries again with the current configuration and queue those that pass."""
    from bridge.replay import replay_rejected

    if bool(ids) == replay_all:
        raise click.UsageError("give rejected IDs, or --all")
    settings = load(config)
    messages: list[str] = []
    with database(settings, write=True) as conn:
        todo = list(ids) or sorted(r["id"] for r in op.rejected(conn, limit=None, pending_only=True))

        def replay(rid: int) -> str:
            with op.transaction(conn):
                ok, message = replay_rejected(conn, settings, rid, time.time())
            messages.append(f"rejected {rid}: {message}")
            return "queued" if ok else "still refused"

        if replay_all:
            tally = _bulk("replay", todo, replay)
        else:
            tally = {}
            for rid in todo:
                result = replay(rid)
                tally[result] = tally.get(result, 0) + 1
    for message in messages:
        click.echo(message)
    summary = ", ".join(f"{n} {what}" for what, n in sorted(tally.items())) or "nothing to replay"
    click.echo(f"summary: {summary}")
    sys.exit(EX_FAILED if tally.get("still refused") else 0)
