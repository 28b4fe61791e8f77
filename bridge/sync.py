"""The steps of one job: get the contact, map it, upsert the WordPress user, write the password back.

Every step is safe to repeat. A generated password is stored in the job before the upsert (so a
repeated run sends the same one) and the upsert carries the job's ``request_id`` (so WordPress
reports a user this job created as created, even on a repeat). After the upsert the job records
the stage ``write_back``; a repeated run then only retries the write-back. The password is erased
from the database when the job finishes or dies.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.clients.crm import CrmClient
from bridge.clients.wordpress import UpsertRequest, UpsertResult, WordPress
from bridge.core.decide import base_login, generate_password, resolve_role
from bridge.core.delivery import Delivery
from bridge.core.mapping import ContactFields, map_record, redacted_fields
from bridge.core.paths import get_path
from bridge.errors import Permanent
from bridge.settings import Settings
from bridge.store.jobs import JobStore
from bridge.store.queue import Job

log = structlog.get_logger("bridge.sync")
ROLES_TTL_S = 60.0


@dataclass
class SyncContext:
    """What job steps need: settings, the WordPress client, one CRM client per connection, the store."""

    settings: Settings
    wordpress: WordPress
    crms: dict[str, CrmClient]
    store: JobStore
    _roles: dict[str, str] = field(default_factory=dict)
    _roles_at: float = 0.0

    async def site_roles(self) -> dict[str, str]:
        """The site's roles (slug → name), cached for a minute."""
        if not self._roles or time.monotonic() - self._roles_at > ROLES_TTL_S:
            self._roles = await self.wordpress.roles()
            self._roles_at = time.monotonic()
        return self._roles


async def _record(crm: CrmClient, delivery: Delivery, fetch: bool) -> tuple[dict[str, Any], bool]:
    """The contact record and whether the CRM knows the contact: fetched from the CRM when the
    connector can, else (or when the CRM has no such contact) taken from the delivery."""
    spec = crm.spec
    from_delivery = get_path(delivery.body, spec.record_path) if spec.record_path else delivery.body
    if spec.fetch is not None and fetch:
        record = await crm.fetch_contact(delivery.contact_id, delivery.email)
        if record is not None:
            return record, True
        known = False
    else:
        known = True
    return (from_delivery if isinstance(from_delivery, dict) else {}), known


def _write_back_fields(conn_settings, password: str | None, result: UpsertResult) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if password and conn_settings.return_password_field:
        attributes[conn_settings.return_password_field] = password
    if "user_login" in conn_settings.return_fields and result.login:
        attributes[conn_settings.return_fields["user_login"]] = result.login
    if "user_id" in conn_settings.return_fields and result.user_id:
        attributes[conn_settings.return_fields["user_id"]] = result.user_id
    return attributes


def _upsert_request(ctx: SyncContext, delivery: Delivery, action: str, fields: ContactFields,
                    email: str, role: str | None, password: str | None, job: Job) -> UpsertRequest:
    wp = ctx.settings.wordpress
    spec = ctx.crms[delivery.connection].spec
    conn = ctx.settings.connections[delivery.connection]
    req = UpsertRequest(
        email=email,
        default_role=wp.default_role,
        tags=fields.tags,
        tags_key=spec.tags_key,
        contact_id=delivery.contact_id,
        contact_id_key=spec.contact_id_key,
        # Lets a repeated run learn that this job created the user, so the write-back still
        # happens; costs a meta row, so only sent when something is written back.
        request_id=f"{ctx.store.instance_id}-{job.id}" if conn.return_password_field or conn.return_fields else None,
        notify_email_change=wp.email_change_notice,
    )
    if action == "update_tags":
        req.create = False
        return req
    req.create = action == "add" or conn.create_on_update
    req.first_name, req.last_name, req.display_name = fields.first_name, fields.last_name, fields.display_name
    req.meta = dict(fields.meta)
    req.role = role
    if req.create:
        req.login = fields.user_login or base_login(
            wp.username_format, email, fields.first_name, fields.last_name, 100 + secrets.randbelow(900)
        )
        req.password = password
        req.send_notification = delivery.send_notification and action == "add"
    return req


async def run_job(ctx: SyncContext, job: Job) -> dict[str, Any]:
    """Do one job (and the jobs coalesced into it); return its outcome or raise a typed error."""
    # Coalesced jobs all pull the contact's current state: from the CRM when the connector
    # fetches, else from the newest delivery of the run.
    delivery = Delivery.from_payload(job.newest_payload)
    conn = ctx.settings.connections.get(delivery.connection)
    crm = ctx.crms.get(delivery.connection)
    if conn is None or crm is None:
        raise Permanent("bridge", f"connection {delivery.connection!r} is no longer configured")
    action = job.effective_action
    stage = json.loads(job.stage) if job.stage else {}
    if stage.get("step") == "write_back":
        return await _write_back(ctx, job, crm, delivery, stage, job.secret)
    if action == "delete":
        return await _delete(ctx, conn, crm, delivery)

    record, known = await _record(crm, delivery, fetch=conn.fetch_contact)
    fields = map_record(crm.spec, record, redacted_fields(crm.spec, delivery.body))
    email = fields.user_email or delivery.email
    if not email:
        if not known:  # the CRM has no such contact and the delivery says too little: nothing to sync
            return {"outcome": "not_in_crm", "action": action}
        raise Permanent("bridge", "the contact has no email address (neither in the CRM record nor in the delivery)")

    roles = await ctx.site_roles()
    wp = ctx.settings.wordpress
    decision = resolve_role(delivery.role or fields.role, roles, wp.allowed_roles, wp.default_role, creating=False)
    warnings = [decision.warning] if decision.warning else []
    if decision.warning:
        log.warning("sync.role_fallback", job_id=job.id, warning=decision.warning)

    password = fields.user_pass
    generated = False
    creating_possible = action == "add" or (action == "update" and conn.create_on_update)
    if creating_possible and not password:
        password = job.secret or generate_password(wp.password_length)
        generated = True
        # Kept before the upsert only when it must reach the CRM: a repeated run then sends the
        # same password and the write-back can still happen. Otherwise it is never stored.
        if job.secret is None and conn.return_password_field:
            await ctx.store.save_stage(job.id, None, password)
            job.secret = password

    req = _upsert_request(ctx, delivery, action, fields, email, decision.role if action != "update_tags" else None, password, job)
    result = await ctx.wordpress.upsert(req)
    if result.outcome == "skipped_privileged":
        log.warning("sync.skipped_privileged", job_id=job.id, connection=delivery.connection, user_id=result.user_id)
    outcome = {
        "outcome": result.outcome, "user_id": result.user_id, "login": result.login, "role": result.role,
        "changed": result.changed, "warnings": warnings + result.warnings, "action": action,
    }
    if job.merged:
        outcome["coalesced"] = job.merged
    if fields.redacted:
        outcome["redacted"] = fields.redacted
    attributes = _write_back_fields(conn, password if generated else None, result) if result.created else {}
    if attributes:
        stage = {"step": "write_back", "outcome": outcome, "fields": sorted(attributes)}
        await ctx.store.save_stage(job.id, json.dumps(stage), password if generated else None)
        return await _write_back(ctx, job, crm, delivery, stage, password if generated else None)
    return outcome


async def _write_back(ctx: SyncContext, job: Job, crm: CrmClient, delivery: Delivery,
                      stage: dict[str, Any], password: str | None) -> dict[str, Any]:
    """Write the generated password (and return fields) to the CRM; retried, never logged."""
    conn = ctx.settings.connections[delivery.connection]
    outcome = dict(stage["outcome"])
    result = UpsertResult(user_id=outcome.get("user_id"), created=True, outcome=outcome["outcome"], login=outcome.get("login"))
    attributes = _write_back_fields(conn, password, result)
    await crm.write_back(delivery.contact_id, delivery.email or None, attributes)
    log.info("sync.written_back", job_id=job.id, fields=sorted(attributes))
    outcome["written_back"] = sorted(attributes)
    return outcome


async def _delete(ctx: SyncContext, conn, crm: CrmClient, delivery: Delivery) -> dict[str, Any]:
    """A CRM ``delete``: follow the connection's delete_policy (default: ignore)."""
    if conn.delete_policy == "ignore":
        return {"outcome": "ignored", "action": "delete", "policy": "ignore"}
    result = await ctx.wordpress.delete({
        "email": delivery.email, "contact_id": delivery.contact_id, "contact_id_key": crm.spec.contact_id_key,
        "policy": conn.delete_policy, "reassign_to": conn.reassign_to,
    })
    if result.get("outcome") == "skipped_privileged":
        log.warning("sync.skipped_privileged", connection=delivery.connection, user_id=result.get("user_id"), action="delete")
    return {"outcome": result.get("outcome"), "user_id": result.get("user_id") or None, "action": "delete",
            "policy": conn.delete_policy, "warnings": result.get("warnings") or []}
