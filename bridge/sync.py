"""The steps of one job: get the contact, map it, upsert the WordPress user, write the password back.

Every step is safe to repeat. A generated password is stored in the job before the upsert (so a
repeated run sends the same one) and the upsert carries the job's ``request_id`` (so WordPress
reports a user this job created as created, even on a repeat). After the upsert the job records
the stage ``write_back``; a repeated run then only retries the write-back. The password is erased
from the database when the job finishes or dies.

Write-back is therefore at-least-once, with the same value for as long as the job lives (its
retries). A dead job keeps no plaintext password: when the operator requeues it, the write-back
sets a fresh password on the user this job created (upsert with ``set_password``), keeps it in the
job, and writes that one back; the outcome says ``password_renewed``, or ``password_not_written``
with the reason when the user is no longer found under that email.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.clients.crm import CrmClient
from bridge.clients.wordpress import UpsertRequest, UpsertResult, WordPress
from bridge.core.contacts import LINK_LOG, link
from bridge.core.decide import generate_password
from bridge.core.delivery import Delivery
from bridge.core.emails import normalize_email
from bridge.core.paths import get_path
from bridge.core.plan import plan_upsert
from bridge.errors import BadDelivery, Permanent
from bridge.settings import Settings
from bridge.store.jobs import JobStore
from bridge.store.queue import Job

log = structlog.get_logger("bridge.sync")


def normalize_email_or_permanent(email: str) -> str:
    """The record's email as WordPress takes it; an address WordPress refuses is a Permanent error
    (retrying cannot fix the CRM's data)."""
    try:
        return normalize_email(email)
    except BadDelivery as err:
        raise Permanent("bridge", err.message) from None
ROLES_TTL_S = 60.0
# Records fetched in a run whose WordPress step failed, kept for the job's next run (in memory).
RECORDS_KEPT = 10_000
RECORD_TTL_S = 3600.0


@dataclass
class SyncContext:
    """What job steps need: settings, the WordPress client, one CRM client per connection, the store."""

    settings: Settings
    wordpress: WordPress
    crms: dict[str, CrmClient]
    store: JobStore
    # Sends the upserts of concurrent jobs as batch requests (bridge.batching); None: one by one.
    batcher: Any = None
    _roles: dict[str, str] = field(default_factory=dict)
    _roles_at: float = 0.0
    # (job id, merged ids) → (record, fetched, when): see fetched_record.
    _records: OrderedDict = field(default_factory=OrderedDict)

    async def site_roles(self) -> dict[str, str]:
        """The site's roles (slug → name), cached for a minute."""
        if not self._roles or time.monotonic() - self._roles_at > ROLES_TTL_S:
            self._roles = await self.wordpress.roles()
            self._roles_at = time.monotonic()
        return self._roles


    async def fetched_record(self, job: Job, crm: CrmClient, delivery: Delivery,
                             fetch: bool) -> tuple[dict[str, Any] | None, bool]:
        """The run's record (``_record``), reused when this job's last run fetched it and failed
        only later (the WordPress step), for the same coalesced jobs, within RECORD_TTL_S. Kept
        in memory only (a record may hold what the CRM treats as secret): a restart fetches again."""
        key = (job.id, tuple(job.merged))
        kept = self._records.pop(key, None)
        if kept is not None and time.monotonic() - kept[2] <= RECORD_TTL_S:
            log.info("sync.record_reused", job_id=job.id)
            record, fetched = kept[0], kept[1]
        else:
            record, fetched = await _record(crm, delivery, fetch)
        if fetched:  # until the run gets past WordPress (forget_record)
            self._records[key] = (record, fetched, time.monotonic())
            while len(self._records) > RECORDS_KEPT:
                self._records.popitem(last=False)
        return record, fetched

    def forget_record(self, job: Job) -> None:
        """The run got past the WordPress step: its record is not needed again."""
        self._records.pop((job.id, tuple(job.merged)), None)


async def _record(crm: CrmClient, delivery: Delivery, fetch: bool) -> tuple[dict[str, Any] | None, bool]:
    """The contact record and whether it came from the CRM.

    When the connector fetches contacts, the CRM record is the only source of account fields: the
    delivery (whose access key may have leaked) only names the contact, and a contact the CRM does
    not know gives None, so nothing is written. Otherwise the delivery is the record."""
    spec = crm.spec
    if spec.fetch is not None and fetch:
        return await crm.fetch_contact(delivery.contact_id, delivery.email), True
    from_delivery = get_path(delivery.body, spec.record_path) if spec.record_path else delivery.body
    return (from_delivery if isinstance(from_delivery, dict) else {}), False


def _write_back_fields(conn_settings, password: str | None, result: UpsertResult) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if password and conn_settings.return_password_field:
        attributes[conn_settings.return_password_field] = password
    if "user_login" in conn_settings.return_fields and result.login:
        attributes[conn_settings.return_fields["user_login"]] = result.login
    if "user_id" in conn_settings.return_fields and result.user_id:
        attributes[conn_settings.return_fields["user_id"]] = result.user_id
    return attributes


def job_deliveries(job: Job) -> list[Delivery]:
    """The deliveries one run covers, oldest first: the job's own and those coalesced into it."""
    return [Delivery.from_payload(p) for p in (job.payload, *job.merged_payloads)]


async def run_job(ctx: SyncContext, job: Job) -> dict[str, Any]:
    """Do one job (and the jobs coalesced into it): fetch the record, plan (``bridge.core.plan``),
    perform the plan's calls; return the outcome or raise a typed error."""
    deliveries = job_deliveries(job)
    newest = deliveries[-1]
    conn = ctx.settings.connections.get(newest.connection)
    crm = ctx.crms.get(newest.connection)
    if conn is None or crm is None:
        raise Permanent("bridge", f"connection {newest.connection!r} is no longer configured")
    stage = json.loads(job.stage) if job.stage else {}
    if stage.get("step") == "write_back":
        return await _write_back(ctx, job, crm, newest, stage, job.secret)
    if newest.action == "delete":
        return await _delete(ctx, conn, crm, newest)

    # Coalesced jobs all pull the contact's current state: one CRM fetch for the run.
    record, fetched = await ctx.fetched_record(job, crm, newest, conn.fetch_contact)
    wp = ctx.settings.wordpress
    roles = await ctx.site_roles()
    # Only a password that goes back to the CRM is made here (see Plan.unusable_password).
    password = job.secret or (generate_password(wp.password_length) if conn.return_password_field else None)
    # The number only the fnamenum login format uses (secrets: an os.urandom read, 2% of the
    # event loop's time per job when drawn for every job).
    number = 100 + secrets.randbelow(900) if wp.username_format == "fnamenum" else 0
    plan = plan_upsert(deliveries, record, fetched, crm.spec, conn, wp, roles, password, number)
    if plan.outcome is not None or plan.error is not None:
        ctx.forget_record(job)
    if plan.outcome is not None:
        log.info(f"sync.{plan.outcome}", job_id=job.id, connection=newest.connection)
        return {"outcome": plan.outcome, "action": plan.action}
    if plan.error is not None:
        raise Permanent("bridge", plan.error)
    for warning in plan.warnings:
        log.warning("sync.role_fallback", job_id=job.id, warning=warning)
    plan.upsert["email"] = normalize_email_or_permanent(plan.upsert["email"])
    if plan.keep_password and job.secret is None:
        # Kept before the upsert only when it must reach the CRM: a repeated run then sends the
        # same password and the write-back can still happen. Otherwise it is never stored.
        await ctx.store.save_stage(job, None, password)
        job.secret = password
    req = UpsertRequest(**plan.upsert, notify_email_change=wp.email_change_notice,
                        # Lets a repeated run learn that this job created the user, so the write-back
                        # still happens; costs a meta row, so only sent when something is written back.
                        request_id=f"{ctx.store.instance_id}-{job.id}" if plan.write_back else None)
    result = await (ctx.batcher.upsert(req) if ctx.batcher is not None else ctx.wordpress.upsert(req))
    ctx.forget_record(job)
    if fetched or result.user_id is not None:  # the CRM's record or the WordPress user: the current email
        await _learn_link(ctx, job, newest.connection, plan.upsert.get("contact_id"), plan.upsert["email"])
    if result.outcome == "skipped_privileged":
        log.warning("sync.skipped_privileged", job_id=job.id, connection=newest.connection,
                    user_id=result.user_id)
    outcome = {
        "outcome": result.outcome, "user_id": result.user_id, "login": result.login, "role": result.role,
        "changed": result.changed, "warnings": plan.warnings + result.warnings, "action": plan.action,
    }
    if job.merged:
        outcome["coalesced"] = job.merged
    if plan.redacted:
        outcome["redacted"] = plan.redacted
    sent_password = password if plan.password_generated else None
    attributes = _write_back_fields(conn, sent_password, result) if result.created else {}
    if attributes:
        stage = {"step": "write_back", "outcome": outcome, "fields": sorted(attributes),
                 "email": plan.upsert["email"]}
        await ctx.store.save_stage(job, json.dumps(stage), sent_password)
        return await _write_back(ctx, job, crm, newest, stage, sent_password)
    return outcome


async def _learn_link(ctx: SyncContext, job: Job, connection: str, contact_id: str | None,
                      email: str) -> None:
    """Learn that ``email`` is the contact's current email (``bridge.core.contacts``), so deliveries
    naming only that email order with the contact ID. Never fails the job: the upsert is done, and
    a link not learned now is learned by the contact's next delivery or run."""
    if link(contact_id, email) is None:
        return
    try:
        event = await ctx.store.learn_link(connection, contact_id, email)
    except Exception as exc:  # the database refused the write: the job's result matters more
        log.warning("contact.link_failed", job_id=job.id, connection=connection,
                    error=f"{type(exc).__name__}: {exc}")
        return
    if (how := LINK_LOG.get(event)) is not None:
        getattr(log, how[0])(how[1], job_id=job.id, connection=connection, contact_id=contact_id)


async def _write_back(ctx: SyncContext, job: Job, crm: CrmClient, delivery: Delivery,
                      stage: dict[str, Any], password: str | None) -> dict[str, Any]:
    """Write the generated password (and return fields) to the CRM; retried, never logged."""
    conn = ctx.settings.connections[delivery.connection]
    outcome = dict(stage["outcome"])
    wanted = conn.return_password_field
    if password is None and wanted and wanted in stage.get("fields", ()):
        password, why_not = await _renew_password(ctx, job, crm, delivery, stage)
        if password is None:
            return {**outcome, "written_back": [], "password_not_written": why_not}
        outcome["password_renewed"] = True
    result = UpsertResult(user_id=outcome.get("user_id"), created=True, outcome=outcome["outcome"],
                          login=outcome.get("login"))
    attributes = _write_back_fields(conn, password, result)
    await crm.write_back(delivery.contact_id, delivery.email or None, attributes)
    log.info("sync.written_back", job_id=job.id, fields=sorted(attributes))
    outcome["written_back"] = sorted(attributes)
    return outcome


async def _renew_password(ctx: SyncContext, job: Job, crm: CrmClient, delivery: Delivery,
                          stage: dict[str, Any]) -> tuple[str | None, str | None]:
    """A new password for the user this job created, when the one it made is gone (a dead job keeps
    no plaintext password, so a requeued write-back has nothing to send): set on the user through
    the plugin's upsert (``set_password``), kept in the job first so a repeat sends the same one.
    Returns (password, None), or (None, why not) when the user is no longer the one this job made."""
    wp = ctx.settings.wordpress
    email = stage.get("email") or delivery.email
    if not email:
        return None, "the job does not know the email of the user it created"
    password = generate_password(wp.password_length)
    await ctx.store.save_stage(job, json.dumps(stage), password)
    job.secret = password
    result = await ctx.wordpress.upsert(UpsertRequest(email=email, password=password, set_password=True,
                                                      create=False,
                                                      default_role=wp.default_role))
    if result.user_id is None or result.user_id != stage["outcome"].get("user_id"):
        return (None, f"the user this job created (ID {stage['outcome'].get('user_id')}) "
                      "no longer has that email")
    log.info("sync.password_renewed", job_id=job.id, user_id=result.user_id)
    return password, None


async def _delete(ctx: SyncContext, conn, crm: CrmClient, delivery: Delivery) -> dict[str, Any]:
    """A CRM ``delete``: follow the connection's delete_policy (default: ignore)."""
    if conn.delete_policy == "ignore":
        return {"outcome": "ignored", "action": "delete", "policy": "ignore"}
    result = await ctx.wordpress.delete({
        "email": delivery.email, "contact_id": delivery.contact_id, "contact_id_key": crm.spec.contact_id_key,
        "policy": conn.delete_policy, "reassign_to": conn.reassign_to,
    })
    if result.get("outcome") == "skipped_privileged":
        log.warning("sync.skipped_privileged", connection=delivery.connection, user_id=result.get("user_id"),
                    action="delete")
    return {"outcome": result.get("outcome"), "user_id": result.get("user_id") or None, "action": "delete",
            "policy": conn.delete_policy, "warnings": result.get("warnings") or []}
