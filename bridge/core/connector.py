"""Connectors are data: the description of a CRM, and the built-in presets written in it.

A connector says where the contact ID, email, fields and tags are in a delivery (JSON paths,
see ``bridge.core.paths``), how to fetch a contact, how to write a field back, and how to create
and delete a webhook subscription, as request templates with ``{{merge_fields}}``
(``bridge.core.templates``). The built-in CRMs below are nothing but presets of this description;
a configuration can override any part of them, or describe a new CRM from scratch.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.core.paths import PathError, split_path

ACTIONS = ("add", "update", "update_tags", "delete")
WP_FIELDS = (
    "user_email",
    "user_login",
    "user_pass",
    "first_name",
    "last_name",
    "display_name",
    "role",
)


def _check_path(value: str | None) -> str | None:
    if value is not None and value != "":
        split_path(value)
    return value


class RequestSpec(BaseModel):
    """One HTTP request to the CRM: method, path template (joined to ``base_url``), query, body."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str
    query: dict[str, str] = Field(default_factory=dict)
    json_body: Any = None
    # Where the useful value is in the answer: the contact record (fetch) or the new ID (webhook create).
    response_path: str | None = None

    @field_validator("response_path")
    @classmethod
    def _response_path(cls, value: str | None) -> str | None:
        return _check_path(value)


class ConnectorSpec(BaseModel):
    """The full description of one CRM."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = ""
    # Header templates, filled from the connection's secrets: {"Authorization": "Token {{secrets.token}}"}
    headers: dict[str, str] = Field(default_factory=dict)
    # Where things are in a delivery body; the first path holding a value wins.
    contact_id_paths: list[str] = Field(default_factory=list)
    email_paths: list[str] = Field(default_factory=list)
    record_path: str | None = None
    # Deliveries that name their own operation (Rownd's meta.operation) and how they map to actions.
    operation_path: str | None = None
    operations: dict[str, Literal["add", "update", "update_tags", "delete", "ignore"]] = Field(
        default_factory=dict)
    # Action for a delivery on /hooks/{connection} that names none (e.g. User.com "new user" → add).
    default_action: Literal["add", "update", "update_tags"] | None = None
    # Fields hidden by the CRM (Rownd's visibility_update): never written.
    redacted_path: str | None = None
    redacted_marker: str | None = None
    # CRM record path → WordPress field (user_email, first_name, ..., or meta.KEY).
    fields: dict[str, str] = Field(default_factory=dict)
    tags_path: str | None = None
    # Prefix of the user meta keys: {prefix}_tags and {prefix}_contact_id (WP Fusion's names).
    meta_prefix: str = "crm"
    fetch: RequestSpec | None = None
    write_back: RequestSpec | None = None
    webhook_create: RequestSpec | None = None
    webhook_delete: RequestSpec | None = None
    webhook_list: RequestSpec | None = None
    # A harmless authenticated request (reads, never writes) that ``wp-sync-bridge doctor`` and the
    # ``wpsb_crm_up`` metric send to check the credentials and that the CRM answers.
    probe: RequestSpec | None = None
    # Answer bodies that mean "bad credentials" or "no such contact" whatever the status says
    # (Customerly answers a bad token with HTTP 500 "Access token not found.").
    auth_error_markers: list[str] = Field(default_factory=list)
    # Where the sender puts its own ID of an event, if anywhere but the webhook-id header: a repeat
    # with the same ID is a duplicate within the dedupe window (server.dedupe_window_s).
    event_id_header: str | None = None
    event_id_path: str | None = None
    not_found_markers: list[str] = Field(default_factory=list)

    @field_validator("contact_id_paths", "email_paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for p in value:
            split_path(p)
        return value

    @field_validator("record_path", "operation_path", "redacted_path", "tags_path", "event_id_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return _check_path(value)

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: dict[str, str]) -> dict[str, str]:
        for source, target in value.items():
            try:
                split_path(source)
            except PathError as exc:
                raise ValueError(f"fields.{source}: {exc}") from None
            if target not in WP_FIELDS and not (target.startswith("meta.") and len(target) > 5):
                raise ValueError(
                    f"fields.{source}: unknown WordPress field {target!r}; use one of "
                    f"{', '.join(WP_FIELDS)} or meta.KEY"
                )
        return value

    @property
    def tags_key(self) -> str:
        """User meta key holding the tags, e.g. ``customerly_tags``."""
        return f"{self.meta_prefix}_tags"

    @property
    def contact_id_key(self) -> str:
        """User meta key holding the CRM contact ID, e.g. ``customerly_contact_id``."""
        return f"{self.meta_prefix}_contact_id"


PRESETS: dict[str, dict[str, Any]] = {
    # https://docs.customerly.io/api — the contact ID is the email (WP Fusion's Customerly module).
    "customerly": {
        "base_url": "https://api.customerly.io/v1",
        # Current clients send Bearer; older docs and WP Fusion send "Authentication: AccessToken: T".
        "headers": {
            "Authorization": "Bearer {{secrets.token}}",
            "Authentication": "AccessToken: {{secrets.token}}",
            "Accept": "application/json",
        },
        "contact_id_paths": ["data.user.data.email"],
        "email_paths": ["data.user.data.email"],
        "record_path": "data.user.data",
        "fields": {
            "email": "user_email",
            "name": "display_name",
            "attributes.first_name": "first_name",
            "attributes.last_name": "last_name",
            "attributes.user_login": "user_login",
            "attributes.user_pass": "user_pass",
        },
        "tags_path": "tags",
        "meta_prefix": "customerly",
        "fetch": {"method": "GET", "path": "/users", "query": {"email": "{{email}}"},
                  "response_path": "data"},
        "write_back": {
            "method": "POST",
            "path": "/users",
            "json_body": {"users": [{"email": "{{email}}", "attributes": "{{attributes}}"}]},
        },
        # WP Fusion's Customerly connection test is this plain list request.
        "probe": {"method": "GET", "path": "/users"},
        "auth_error_markers": ["Access token not found"],
        "not_found_markers": ["User doesn't exist"],
    },
    # User.com public API v2: Token auth and a versioned Accept header.
    "usercom": {
        "headers": {"Authorization": "Token {{secrets.token}}", "Accept": "*/*; version=2"},
        "contact_id_paths": ["user.id", "id"],
        "email_paths": ["user.email", "email"],
        "record_path": "user",
        "default_action": "add",
        "fields": {
            "email": "user_email",
            "first_name": "first_name",
            "last_name": "last_name",
            "attributes[name_std=user_login].value": "user_login",
            "attributes[name_std=user_pass].value": "user_pass",
        },
        "tags_path": "tags[].name",
        "meta_prefix": "usercom",
        "fetch": {"method": "GET", "path": "/users/{{contact_id}}/"},
        "write_back": {
            "method": "POST",
            "path": "/users/{{contact_id}}/set_multiple_attributes/",
            "json_body": "{{attributes}}",
        },
        # The user list (Django REST framework pagination); a bad token is a 401 with "detail".
        "probe": {"method": "GET", "path": "/users/"},
    },
    # Rownd generic webhook: the operation is in the body, whatever HTTP method was configured.
    "rownd": {
        "base_url": "https://api.rownd.io",
        "headers": {"x-rownd-app-key": "{{secrets.app_key}}", "x-rownd-app-secret": "{{secrets.app_secret}}"},
        "contact_id_paths": ["data.user_id"],
        "email_paths": ["meta.lookup_values[field=email].value", "data.email"],
        "record_path": "data",
        "operation_path": "meta.operation",
        "operations": {
            "data_insert": "add",
            "data_update": "update",
            "visibility_update": "update",
            "delete": "delete",
        },
        "redacted_path": "redacted",
        "redacted_marker": "<<REDACTED>>",
        "fields": {"email": "user_email", "first_name": "first_name", "last_name": "last_name"},
        "meta_prefix": "rownd",
        "write_back": {
            "method": "PATCH",
            "path": "/applications/{{secrets.app_id}}/users/{{contact_id}}/data",
            "json_body": {"data": "{{attributes}}"},
        },
        # The application's user list: app key and secret checked, nothing written.
        "probe": {"method": "GET", "path": "/applications/{{secrets.app_id}}/users/data"},
    },
    "generic": {},
}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("fields", "operations"):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_connector(crm: str, overrides: dict[str, Any] | None = None,
                    extra_fields: dict[str, str] | None = None) -> ConnectorSpec:
    """The connector for preset ``crm`` with ``overrides`` merged in; raises ValueError naming the problem."""
    if crm not in PRESETS:
        raise ValueError(f"unknown crm {crm!r}; built-in presets are {', '.join(sorted(PRESETS))}")
    data = _deep_merge(PRESETS[crm], overrides or {})
    if extra_fields:
        data["fields"] = {**data.get("fields", {}), **extra_fields}
    data.setdefault("meta_prefix", crm)
    return ConnectorSpec.model_validate(data)
