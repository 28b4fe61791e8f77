"""What one job run will do, decided before anything is done: pure, from the job's deliveries (its
own and those coalesced into it, in arrival order), the contact record and the site's roles.

Coalescing merges effects, not payloads (issue 11): the fields come from the CRM record when the
connection fetches it (the only source then), else from the newest delivery that carries each
field; tags from the newest delivery that carries tags; create semantics and ``send_notification``
are kept when an ``add`` is among the deliveries; the role from the newest delivery that asks for
one. ``update_tags`` deliveries contribute tags only, as WP Fusion's ``update_tags`` does.

The executor (``bridge.sync``) only performs the plan: an optional password kept before the
upsert, one upsert with ``Plan.upsert`` as its arguments, and the write-back the plan names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.core.connector import ConnectorSpec
from bridge.core.decide import base_login, resolve_role
from bridge.core.delivery import Delivery
from bridge.core.mapping import ContactFields, map_record, redacted_fields
from bridge.core.paths import get_path

CORE_FIELDS = ("user_email", "user_login", "user_pass", "first_name", "last_name", "display_name", "role")


@dataclass
class Plan:
    """The calls of one run. ``outcome`` set: nothing to call (e.g. ``not_in_crm``)."""

    action: str
    outcome: str | None = None
    upsert: dict[str, Any] = field(default_factory=dict)
    creating: bool = False
    # The password is generated (not the CRM's) and must be kept before the upsert (written back).
    password_generated: bool = False
    keep_password: bool = False
    # A create with no password anyone will know (no CRM user_pass, no write-back): none is sent
    # and the plugin stores an unusable one instead of hashing a throwaway (wordpress/SECURITY.md).
    unusable_password: bool = False
    # CRM fields to write back if the upsert creates the user: attribute → "password"|"user_login"|"user_id".
    write_back: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    redacted: list[str] = field(default_factory=list)
    error: str | None = None  # a reason the run cannot succeed (raised as Permanent by the executor)


def effective_action(actions: list[str]) -> str:
    """One label for merged deliveries: add if any creates, update if any carries fields, else tags."""
    if "add" in actions:
        return "add"
    if "update" in actions:
        return "update"
    return actions[-1] if actions else "update"


def merge_fields(spec: ConnectorSpec, deliveries: list[Delivery]) -> ContactFields:
    """The contact as the deliveries say it (no CRM fetch): for each field the newest delivery that
    carries it; tags from the newest delivery that carries tags; update_tags gives tags only."""
    merged = ContactFields()
    for delivery in deliveries:  # oldest first: a newer value overwrites
        record = get_path(delivery.body, spec.record_path) if spec.record_path else delivery.body
        mapped = map_record(spec, record if isinstance(record, dict) else {},
                            redacted_fields(spec, delivery.body))
        if mapped.tags is not None:
            merged.tags = mapped.tags
        if delivery.action == "update_tags":
            continue
        for name in CORE_FIELDS:
            value = getattr(mapped, name)
            if value is not None:
                setattr(merged, name, value)
        merged.meta.update(mapped.meta)
        merged.redacted = mapped.redacted  # what the newest delivery with fields hid
    if merged.user_email is None:
        merged.user_email = _newest(deliveries, "email")
    return merged


def _newest(deliveries: list[Delivery], attribute: str) -> Any:
    for delivery in reversed(deliveries):
        value = getattr(delivery, attribute)
        if value:
            return value
    return None


def plan_upsert(
    deliveries: list[Delivery],
    record: dict[str, Any] | None,
    fetched: bool,
    spec: ConnectorSpec,
    conn: Any,
    wp: Any,
    site_roles: dict[str, str],
    password: str | None,
    login_number: int,
) -> Plan:
    """Plan the upsert for a job's deliveries (oldest first, none a delete).

    ``record``/``fetched``: the CRM's record when the connection fetched it (None: the CRM does not
    know the contact). ``conn``/``wp``: the connection's and WordPress settings. ``password``: the
    one to use if a password must be generated for the write-back (the job's kept one, else a
    fresh one), so that a repeated run sends the same; None when the connection writes none back.
    ``login_number``: for the ``fnamenum`` username format.
    """
    actions = [d.action for d in deliveries]
    action = effective_action(actions)
    if fetched and record is None:
        return Plan(action, outcome="not_in_crm")
    tags_only = all(a == "update_tags" for a in actions)
    if fetched:
        contact = map_record(spec, record or {})
        if tags_only:
            contact = ContactFields(user_email=contact.user_email, tags=contact.tags)
    else:
        contact = merge_fields(spec, deliveries)
    email = contact.user_email
    if not email:
        where = "the CRM record" if fetched else "the deliveries"
        return Plan(action, error=f"the contact has no email address in {where} (mapped to user_email)")
    contact_id = _newest(deliveries, "contact_id")
    upsert: dict[str, Any] = {
        "email": email, "default_role": wp.default_role, "tags": contact.tags, "tags_key": spec.tags_key,
        "contact_id": contact_id, "contact_id_key": spec.contact_id_key,
    }
    out = Plan(action, upsert=upsert, redacted=list(contact.redacted))
    if tags_only:
        upsert["create"] = False
        return out
    decision = resolve_role(_newest(deliveries, "role") or contact.role, site_roles, wp.granted_roles(),
                            wp.default_role, creating=False)
    if decision.warning:
        out.warnings.append(decision.warning)
    out.creating = "add" in actions or (conn.create_on_update and "update" in actions)
    upsert.update(create=out.creating, role=decision.role, meta=dict(contact.meta),
                  first_name=contact.first_name,
                  last_name=contact.last_name, display_name=contact.display_name)
    if not out.creating:
        return out
    upsert["login"] = contact.user_login or base_login(
        wp.username_format, email, contact.first_name, contact.last_name, login_number)
    upsert["send_notification"] = any(d.action == "add" and d.send_notification for d in deliveries)
    if contact.user_pass:
        upsert["password"] = contact.user_pass
    elif conn.return_password_field:
        upsert["password"] = password
        out.password_generated = out.keep_password = True
        out.write_back[conn.return_password_field] = "password"
    else:
        out.unusable_password = True
    for wp_field, crm_field in conn.return_fields.items():
        out.write_back[crm_field] = wp_field
    return out
