"""Map a CRM record to WordPress user fields: pure, driven by the connector's ``fields``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.core.connector import ConnectorSpec
from bridge.core.paths import get_path, split_path


@dataclass
class ContactFields:
    """What the CRM says about one contact, in WordPress terms. ``None`` means "not given"."""

    user_email: str | None = None
    user_login: str | None = None
    user_pass: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    display_name: str | None = None
    role: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    tags: list[str] | None = None
    redacted: list[str] = field(default_factory=list)


def redacted_fields(spec: ConnectorSpec, body: dict[str, Any]) -> set[str]:
    """Record keys the CRM hid in this delivery (Rownd's ``redacted`` list)."""
    if not spec.redacted_path:
        return set()
    listed = get_path(body, spec.redacted_path) or []
    return {str(x) for x in listed} if isinstance(listed, list) else set()


def _scalar(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip()
    return value


def map_record(spec: ConnectorSpec, record: dict[str, Any],
               redacted: set[str] = frozenset()) -> ContactFields:
    """Apply the connector's field mapping to a record; redacted or masked values are skipped."""
    out = ContactFields()
    for source, target in spec.fields.items():
        top_key = split_path(source)[0][0]
        value = get_path(record, source)
        if top_key in redacted or (spec.redacted_marker is not None and value == spec.redacted_marker):
            out.redacted.append(source)
            continue
        if value is None or value == "":
            continue
        value = _scalar(value)
        if target.startswith("meta."):
            out.meta[target[5:]] = value
        elif isinstance(value, (dict, list)):
            continue  # a core user field takes text only
        else:
            setattr(out, target, str(value))
    if spec.tags_path:
        tags = get_path(record, spec.tags_path)
        if isinstance(tags, list):
            out.tags = sorted({str(t).strip() for t in tags if isinstance(t, (str, int)) and str(t).strip()})
        elif tags is None:
            out.tags = None
    return out
