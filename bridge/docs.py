"""The configuration reference, generated from the settings model: ``python -m bridge.docs``
writes Markdown on stdout (``make docs`` puts it in docs/configuration.md; a test fails when the
file and the model drift apart).

Every key is listed with its type, default and environment variable. A key's text is its
``Field(description=...)`` when the model gives one, else the entry in ``DESCRIPTIONS`` below; a
key with neither is printed as undocumented, and the test refuses that too.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bridge.core.connector import ConnectorSpec, RequestSpec
from bridge.settings import ConnectionSettings, Settings

UNDOCUMENTED = "(undocumented)"

DESCRIPTIONS: dict[str, str] = {
    "worker.retry_budget_s": "How long a failing job is retried (from its arrival or requeue) before it goes "
                             "to the dead-letter state; 3 days, as Standard Webhooks senders retry.",
    "worker.job_timeout_s": "A job run taking longer is cancelled and retried later (its lease is fenced).",
    "worker.loop_backoff_max_s": "Longest pause of a background loop (claim, results, maintenance, checks) "
                                 "between rounds after errors; it logs, backs off and goes on.",
    "worker.outage_probe_max_s": "While WordPress is unreachable, dispatch pauses and probes it "
                                 "with a backoff "
                                 "up to this; waiting jobs spend no attempts.",
    "connector.event_id_header": "A header carrying the sender's event ID: a repeat of it "
                                                  "within dedupe_window_s is a duplicate.",
    "connector.event_id_path": "A body path carrying the sender's event ID (as event_id_header).",
    "log_level": "Lowest level logged: debug, info, warning, error or critical "
                 "(`delivery.accepted` is debug).",
    "log_format": "`json`: one JSON event per line (for the journal); `console`: coloured, for a terminal.",
    "server.host": "Address to listen on. Keep 127.0.0.1 behind a TLS proxy on the same machine.",
    "server.port": "TCP port to listen on (0: any free port, for tests).",
    "server.access_keys": "Keys accepted in `?access_key=` or the `X-Access-Key` header; "
                          "list several to rotate. "
                          "At least 8 characters each; `serve` refuses to start without one.",
    "server.max_body_bytes": "Larger deliveries are answered 413.",
    "server.dedupe_window_s": "A repeated delivery within this window is answered with its first job.",
    "server.default_connection": "The connection used on `/` when the request names none "
                                 "(default: the first).",
    "server.auth_failures_per_min": "Wrong keys per client address and minute before answering 429.",
    "server.auth_tracker_size": "Client addresses the wrong-key throttle remembers at most.",
    "server.trusted_proxies": "Proxies whose `X-Forwarded-For` names the real client "
                              "(e.g. the local TLS proxy).",
    "server.signature_tolerance_s": "Signed deliveries (Standard Webhooks) older or newer "
                                    "than this are refused.",
    "server.samples_per_connection": "Deliveries kept per connection (secrets masked) "
                                     "for `wp-sync-bridge discover`.",
    "server.public_url": "The https address CRMs reach the bridge at (behind the proxy), "
                         "for `webhooks register`.",
    "server.metrics_host": "Serve `/metrics` on this address instead of the webhook listener "
                           "(with metrics_port).",
    "server.metrics_port": "Serve `/metrics` on this port instead of the webhook listener; "
                           "unset: on `server.port`.",
    "server.metrics_token": "When set, `/metrics` requires `Authorization: Bearer TOKEN`.",
    "database.path": "The SQLite file (WAL). Created by `serve` only; operator commands never create it.",
    "database.url": "`postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME` selects the PostgreSQL store, "
                    "for several "
                    "bridges sharing one queue (`pip install 'wp-sync-bridge[postgresql]'`); "
                    "unset: SQLite at "
                    "`database.path`. `serve` migrates it; operator commands never do.",
    "database.notify": "PostgreSQL: a commit that makes work due sends one NOTIFY, "
                       "so the other bridges claim "
                       "it at once; false: they find it at their next poll (`worker.poll_interval_s`).",
    "worker.concurrency": "WordPress requests in flight; with batching up to concurrency x batch_size "
                          "jobs run "
                          "at once (a contact's jobs always run one at a time, in order).",
    "worker.batch_size": "Upserts of running jobs sent as one plugin batch request "
                         "(plugin 2.1, at most its own limit: 100 from plugin 2.4, 50 before; at most "
                         "10 of them carrying a password); 1: one upsert per request.",
    "worker.batch_linger_s": "Longest wait of an upsert for running jobs still on their way to theirs; "
                             "a lone job never waits.",
    "worker.batch_hold_s": "While the intake keeps answering deliveries, the longest wait of a batch "
                           "that is not full for more upserts (never a lone upsert with nothing in "
                           "flight); 0: off.",
    "worker.claim_interval_s": "While a WordPress request is in flight, the queue is claimed from at most "
                               "this often (each claim is a commit); with none in flight, at once.",
    "worker.max_attempts": "Runs of a job before it goes to the dead-letter state.",
    "worker.lease_s": "A running job not renewed within this time is taken back into the queue.",
    "worker.poll_interval_s": "How often the queue is looked at when no delivery wakes it.",
    "worker.retry_base_s": "Queue backoff after a failed run: base, doubled each time with jitter.",
    "worker.retry_max_s": "The longest queue backoff.",
    "worker.done_retention_s": "Done jobs are pruned after this long.",
    "worker.shutdown_grace_s": "On SIGTERM, running jobs get this long to finish; the rest stay queued.",
    "worker.http_attempts": "Quick attempts of one HTTP request within a run "
                            "(connection errors, 429, 502-504).",
    "worker.http_backoff_s": "First wait between those quick attempts (doubled, with jitter).",
    "worker.http_max_wait_s": "Longest quick wait; a longer Retry-After hands the job back to the queue.",
    "wordpress.url": "The site's home address (https://...). The plugin's REST routes are reached through "
                     "`?rest_route=`, whatever the permalink settings.",
    "wordpress.username": "The WordPress user the bridge acts as (least privilege: docs/production.md).",
    "wordpress.application_password": "That user's application password "
                                      "(Users → Profile → Application Passwords).",
    "wordpress.transport": "`rest` or `xmlrpc`; both need the companion plugin.",
    "wordpress.timeout_s": "Time allowed for one WordPress request.",
    "wordpress.max_connections": "Keep-alive connections to WordPress at most.",
    "wordpress.default_role": "Role of a user created without `role=` "
                              "(must exist on the site; never administrator).",
    "wordpress.allowed_roles": "Roles a delivery or CRM record may ask for (unset: `default_role` alone); "
                               "administrator is never granted.",
    "wordpress.username_format": "Login of a new user: `email`, `flname` (first+last name) or `fnamenum`.",
    "wordpress.password_length": "Length of a generated password.",
    "wordpress.email_change_notice": "Send WordPress's own \"email changed\" notice to the old address "
                                     "when the CRM "
                                     "changes a user's email.",
    "connections.NAME.crm": "The preset: customerly, usercom, rownd, or generic (nothing preset).",
    "connections.NAME.base_url": "The CRM's API root, e.g. https://YOURAPP.user.com/api/public.",
    "connections.NAME.secrets": "Named secrets for the connector's templates "
                                "(`{{secrets.NAME}}`), e.g. token.",
    "connections.NAME.connector": "Overrides of the connector description (table below), "
                                  "merged over the preset.",
    "connections.NAME.fields": "Extra or overriding mappings: CRM path = WordPress field (or meta.KEY).",
    "connections.NAME.return_password_field": "CRM field that receives a generated password "
                                              "(written back once).",
    "connections.NAME.return_fields": "Also write back `user_login` and/or `user_id` into these CRM fields.",
    "connections.NAME.signing_secrets": "Standard Webhooks secrets (`whsec_...`): deliveries must be signed.",
    "connections.NAME.access_keys": "Keys that work for this connection only "
                                    "(`server.access_keys` work for all).",
    "connections.NAME.allowed_networks": "CIDRs the CRM sends from (the client as seen behind "
                                         "`server.trusted_proxies`); empty: any.",
    "connections.NAME.query_overrides": "Query parameters (`email`, `contact_id`, `role`) "
                                        "that may name the contact "
                                        "or its role instead of the body; none on a signed connection.",
    "connections.NAME.create_on_update": "Create the user on an `update` "
                                         "for a contact WordPress does not have.",
    "connections.NAME.delete_policy": "A `delete` delivery: ignore, remove_roles, or delete "
                                      "(needs reassign_to).",
    "connections.NAME.reassign_to": "User ID that receives a deleted user's content.",
    "connections.NAME.fetch_contact": "Fetch the full contact from the CRM (when the connector can) "
                                      "before writing.",
    "connector.base_url": "API root (the connection's base_url sets it too).",
    "connector.headers": "Header templates sent with every request, "
                         "e.g. `Authorization = \"Token {{secrets.token}}\"`.",
    "connector.contact_id_paths": "JSON paths of the contact ID in a delivery; "
                                  "the first holding a value wins.",
    "connector.email_paths": "JSON paths of the email in a delivery.",
    "connector.record_path": "Where the contact record is in a delivery (fields are mapped from there).",
    "connector.operation_path": "Where a delivery names its own operation (Rownd's `meta.operation`).",
    "connector.operations": "Operation value → action (add, update, update_tags, delete, ignore).",
    "connector.default_action": "Action of a delivery on /hooks/NAME that names none.",
    "connector.redacted_path": "Where a delivery lists fields the CRM hid (never written).",
    "connector.redacted_marker": "The value that marks a hidden field.",
    "connector.fields": "CRM record path → WordPress field (user_email, first_name, ..., or meta.KEY).",
    "connector.tags_path": "Where the tags are, e.g. `tags[].name`.",
    "connector.meta_prefix": "Prefix of the user meta keys {prefix}_tags and {prefix}_contact_id.",
    "connector.fetch": "Request that fetches a contact (`{{contact_id}}`, `{{email}}`).",
    "connector.write_back": "Request that writes fields back (`{{attributes}}`).",
    "connector.webhook_create": "Request that creates the webhook subscription (`{{webhook_url}}`).",
    "connector.webhook_delete": "Request that deletes it (`{{webhook_id}}`).",
    "connector.webhook_list": "Request that lists the subscriptions.",
    "connector.probe": "A harmless authenticated request (a read) for `doctor` and the `wpsb_crm_up` metric.",
    "connector.auth_error_markers": "Answer texts meaning bad credentials whatever the status.",
    "connector.not_found_markers": "Answer texts meaning no such contact whatever the status.",
    "request.method": "HTTP method.",
    "request.path": "Path template, appended to base_url.",
    "request.query": "Query parameters (templates).",
    "request.json_body": "JSON body template; a string that is exactly one merge field "
                         "becomes its raw value.",
    "request.response_path": "Where the useful value is in the answer (the record, or the new webhook ID).",
}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``| None``, whether None is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return annotation, False


def type_name(annotation: Any) -> str:
    """A reader's name of a type: ``integer``, ``list of secret``, ``one of: a, b``, ``... or unset``."""
    inner, optional = _unwrap(annotation)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is Literal:
        text = "one of: " + ", ".join(f"`{a}`" for a in args)
    elif origin is list:
        text = f"list of {type_name(args[0])}"
    elif origin is dict:
        text = f"table of {type_name(args[1])}"
    elif inner is SecretStr:
        text = "secret"
    elif isinstance(inner, type) and issubclass(inner, BaseModel):
        text = "table" if inner is not RequestSpec else "request (table below)"
    else:
        text = {str: "string", int: "integer", float: "number", bool: "boolean",
                Path: "path"}.get(inner, "any")
    return f"{text} or unset" if optional else text


def _bounds(info: FieldInfo) -> str:
    marks = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    out = []
    for meta in info.metadata:
        for attr, mark in marks.items():
            if getattr(meta, attr, None) is not None:
                out.append(f"{mark} {getattr(meta, attr)}")
    return f" ({', '.join(out)})" if out else ""


def default_text(info: FieldInfo) -> str:
    """The default as it would be written in the TOML file (``unset`` for none)."""
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(table)"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "unset"
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _env(key: str) -> str:
    return "WPSB_" + key.upper().replace(".", "__")


def rows(model: type[BaseModel], prefix: str, doc_prefix: str | None = None) -> Iterator[tuple[str, ...]]:
    """(key, type, default, environment variable, description) for each field of ``model``."""
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        doc_key = f"{doc_prefix}.{name}" if doc_prefix else key
        description = info.description or DESCRIPTIONS.get(doc_key, UNDOCUMENTED)
        yield key, type_name(info.annotation) + _bounds(info), default_text(info), _env(key), description


def all_rows() -> dict[str, list[tuple[str, ...]]]:
    """The reference's tables: title → rows."""
    tables: dict[str, list[tuple[str, ...]]] = {"Top level": []}
    for name, info in Settings.model_fields.items():
        inner, _ = _unwrap(info.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            tables[f"[{name}]"] = list(rows(inner, name))
        elif typing.get_origin(inner) is dict and typing.get_args(inner)[1] is ConnectionSettings:
            tables[f"[{name}.NAME]"] = list(rows(ConnectionSettings, f"{name}.NAME", "connections.NAME"))
        else:
            tables["Top level"].extend(r for r in rows(Settings, "") if r[0] == name)
    tables["[connections.NAME.connector]"] = list(rows(ConnectorSpec, "connections.NAME.connector",
                                                       "connector"))
    requests = rows(RequestSpec, "connections.NAME.connector.REQUEST", "request")
    tables["Requests (fetch, write_back, webhook_*, probe)"] = list(requests)
    return tables


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m bridge.docs` from bridge/settings.py; do not edit by hand. -->",
        "",
        "The bridge reads one TOML file (`--config FILE` or `$WPSB_CONFIG`), systemd credentials and the",
        "environment; the environment wins over credentials, which win over the file. "
        "Every key can come from a",
        "variable: `WPSB_` + the key in capitals with `__` between levels "
        "(`wordpress.application_password` →",
        "`WPSB_WORDPRESS__APPLICATION_PASSWORD`); a list or table is given as JSON",
        "(`WPSB_SERVER__ACCESS_KEYS='[\"k1\", \"k2\"]'`). Under systemd, "
        "each file in `$CREDENTIALS_DIRECTORY`",
        "(`LoadCredential=`) is one setting, named by its dotted key "
        "or its environment name (README, \"Under",
        "systemd\"). `NAME` is a connection's name. Placeholder values such as `change-me` are refused.",
        "`wp-sync-bridge doctor` checks all of it at once and names where each bad value came from.",
        "",
    ]
    for title, table in all_rows().items():
        out += [f"## {title}", "", "| key | type | default | environment | description |",
                "| --- | --- | --- | --- | --- |"]
        for key, kind, default, env, description in table:
            cells = [f"`{key}`", kind, default, f"`{env}`", description]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def undocumented() -> list[str]:
    """Keys with no description anywhere (the drift test refuses them)."""
    return [row[0] for table in all_rows().values() for row in table if row[4] == UNDOCUMENTED]


if __name__ == "__main__":
    print(render(), end="")
