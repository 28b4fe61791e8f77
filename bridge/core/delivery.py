"""Parse one webhook delivery into a ``Delivery``: pure, from query, content type and body bytes.

Everything that makes a delivery unacceptable raises ``BadDelivery`` with a 4xx status and a
message naming the problem (WP Fusion answers 200 "Abort" here; the CRM then believes it
delivered something that was dropped).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import parse_qsl

import orjson

from bridge.core.connector import ConnectorSpec
from bridge.core.contacts import own_key
from bridge.core.emails import normalize_email
from bridge.core.paths import first_path, get_path
from bridge.errors import BadDelivery

ACTION_ALIASES = {"add_user": "add", "update_user": "update"}
QUEUED_ACTIONS = ("add", "update", "update_tags", "delete")
KNOWN_ACTIONS = (*QUEUED_ACTIONS, "test", *ACTION_ALIASES)
_ACTIONS = frozenset((*QUEUED_ACTIONS, "test"))
MAX_DEPTH = 32
_SPACE = re.compile(r"\s")
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # reused: json.dumps with options builds one per call
TRUE_WORDS = {"1", "true", "yes", "on"}
# Query parameters that never take part in a dedupe key or get stored: they are credentials.
SECRET_PARAMS = frozenset({"access_key"})
# Query parameters that name the contact or the role instead of the body: a connection opts in.
OVERRIDE_PARAMS = ("email", "contact_id", "role")
# A contact ID reaches CRM request paths: nothing in it may move to another path segment.
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 4x (object.__setattr__ per field)
class Delivery:
    """A parsed, acceptable delivery: what the worker needs to run the job. Treat as read-only."""

    connection: str
    action: str
    contact_id: str | None
    email: str | None
    role: str | None = None
    send_notification: bool = False
    body: dict[str, Any] = field(default_factory=dict)
    operation: str | None = None
    # The body's JSON text as received, when it was JSON: stored as is instead of re-encoded.
    body_json: str | None = field(default=None, compare=False, repr=False)

    @property
    def contact_key(self) -> str:
        """The delivery's own ordering key, before any learned link (``bridge.core.contacts``): the
        CRM contact ID, else the case-folded email (an ID that is the email orders with the email)."""
        return own_key(self.connection, self.contact_id, self.email)

    def to_payload(self) -> dict[str, Any]:
        """The JSON-safe form stored with the job."""
        return {
            "connection": self.connection,
            "action": self.action,
            "contact_id": self.contact_id,
            "email": self.email,
            "role": self.role,
            "send_notification": self.send_notification,
            "operation": self.operation,
            "body": self.body,
        }

    def payload_json(self) -> str:
        """``to_payload()`` as compact JSON text; a JSON body's own text is reused, not re-encoded
        (it was just parsed, so it is valid JSON; ``from_payload`` reads back the same values)."""
        if self.body_json is None:
            return _COMPACT.encode(self.to_payload())
        head = self.to_payload()
        del head["body"]
        try:
            encoded = orjson.dumps(head).decode()
        except TypeError:  # a lone surrogate, which orjson refuses; the stdlib escapes it
            encoded = _COMPACT.encode(head)
        return encoded[:-1] + ',"body":' + self.body_json + "}"

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "Delivery":
        """The inverse of ``to_payload``."""
        return cls(**{k: payload.get(k) for k in cls.__dataclass_fields__ if k in payload})


def normalize_action(value: str | None) -> str | None:
    """``wpf_action`` with WP Fusion's aliases resolved; raises BadDelivery for an unknown action."""
    if value is None or value == "":
        return None
    action = ACTION_ALIASES.get(value, value)
    if action not in _ACTIONS:
        raise BadDelivery(
            400,
            "unknown_action",
            f"unknown wpf_action {value[:40]!r}; expected one of {', '.join(KNOWN_ACTIONS)}",
            field="wpf_action",
        )
    return action


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_body(content_type: str | None, body: bytes) -> tuple[dict[str, Any], str | None]:
    """Decode a JSON or form body into an object, with its text when that text is a JSON object;
    raises BadDelivery (400/415) naming the problem."""
    if not body or body.isspace():
        return {}, None
    mime = (content_type or "").split(";")[0].strip().lower()
    json_mime = mime in ("", "application/json", "text/json") or mime.endswith("+json")
    data = _fast_json_object(body) if json_mime else None
    if data is not None:
        text = body.decode("utf-8")  # valid: orjson has checked it
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadDelivery(400, "invalid_encoding", f"body is not valid UTF-8 (byte {exc.start})",
                              field="body") from None
        if mime == "application/x-www-form-urlencoded":
            return dict(parse_qsl(text, keep_blank_values=True)), None
        if not json_mime:
            raise BadDelivery(
                415,
                "unsupported_media_type",
                f"content type {mime[:60]!r} is not accepted; "
                "send application/json or application/x-www-form-urlencoded",
                field="content-type",
            )
        data = _stdlib_json_object(text)
    # Nesting needs an opening bracket per level: a body with few brackets needs no walk.
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise BadDelivery(400, "too_deep", f"JSON nesting deeper than {MAX_DEPTH} levels", field="body")
    return data, text


def _fast_json_object(body: bytes) -> dict[str, Any] | None:
    """The common case, in C: orjson validates UTF-8 and parses strict JSON in one pass. None for
    anything else, which then takes the stdlib path: it accepts what it always did and names the
    problem in the same words."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _stdlib_json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except RecursionError:
        raise BadDelivery(400, "too_deep", f"JSON nesting deeper than {MAX_DEPTH} levels",
                          field="body") from None
    except json.JSONDecodeError as exc:
        raise BadDelivery(400, "invalid_json",
                          f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                          field="body") from None
    except ValueError as exc:  # not a JSONDecodeError: an integer longer than Python's 4300-digit limit
        raise BadDelivery(400, "invalid_json", f"body is not acceptable JSON: {str(exc).split(':')[0][:80]}",
                          field="body") from None
    if not isinstance(data, dict):
        raise BadDelivery(400, "invalid_payload", f"JSON body must be an object, not {type(data).__name__}",
                          field="body")
    return data


def _action_for(spec: ConnectorSpec, query: Mapping[str, str],
                body: dict[str, Any]) -> tuple[str, str | None]:
    action = normalize_action(query.get("wpf_action"))
    if action:
        return action, None
    if spec.operation_path:
        operation = get_path(body, spec.operation_path)
        if operation is not None:
            mapped = spec.operations.get(str(operation))
            if mapped is None:
                raise BadDelivery(
                    400,
                    "unknown_operation",
                    f"{spec.operation_path}={str(operation)[:40]!r} is not one of "
                    f"{', '.join(spec.operations) or 'none configured'}",
                    field=spec.operation_path,
                )
            return mapped, str(operation)
    if spec.default_action:
        return spec.default_action, None
    raise BadDelivery(400, "missing_action", "no wpf_action in the query and none in the body",
                      field="wpf_action")


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def _utf8(text: str) -> bool:
    # JSON's "\ud800" escapes decode to lone surrogates, which SQLite cannot store as TEXT.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_overrides(query: Mapping[str, str], allowed: frozenset[str]) -> None:
    """Refuse (400) a query parameter that would name the contact or role when the connection does
    not take it from the query (the access key leaks; on a signed connection the query is unsigned)."""
    for name in OVERRIDE_PARAMS:
        if name not in allowed and _text(query.get(name)) is not None:
            raise BadDelivery(
                400, "override_not_allowed",
                f"the query parameter {name!r} is not taken on this connection (query_overrides; never on a"
                " connection that checks signatures): send it in the body", field=name,
            )


def check_contact_id(contact_id: str) -> None:
    """Refuse (422) a contact ID that could change a CRM request path or cannot be stored."""
    if len(contact_id) > 255:
        raise BadDelivery(422, "invalid_contact_id", "contact ID longer than 255 characters",
                          field="contact_id")
    if not _utf8(contact_id):
        raise BadDelivery(422, "invalid_contact_id", "contact ID is not valid Unicode (lone surrogate)",
                          field="contact_id")
    if contact_id in (".", "..") or _UNSAFE_ID.search(contact_id):
        raise BadDelivery(422, "invalid_contact_id",
                          "contact ID may not be '.' or '..' or contain slashes, backslashes "
                          "or control characters",
                          field="contact_id")


def parse_delivery(
    connection: str,
    spec: ConnectorSpec,
    query: Mapping[str, str],
    content_type: str | None,
    body: bytes,
    overrides: frozenset[str] = frozenset(),
) -> Delivery:
    """Turn a request into a Delivery, or raise BadDelivery saying what is wrong.

    The action comes from ``wpf_action`` (aliases resolved), else the body's operation, else the
    connector's default. The contact comes from the ``contact_id``/``email`` query parameters when
    the connection takes them (``overrides``), else the connector's JSON paths.
    """
    check_overrides(query, overrides)
    data, text = parse_body(content_type, body)
    action, operation = _action_for(spec, query, data)
    if action == "test":
        return Delivery(connection, "test", None, None, body=data)
    contact_id = _text(query.get("contact_id"))
    # Top-level contact_id/email are the last resort (form bodies, hand-made test requests).
    looked_up: dict[str, Any] = {}  # connectors often read the ID and the email at the same path
    if contact_id is None and (hit := first_path(data, [*spec.contact_id_paths, "contact_id"], looked_up)):
        value = hit[1]
        if type(value) is float and text is not None:
            # orjson reads an integer past 64 bits as a float; the stdlib keeps it exact.
            value = get_path(json.loads(text), hit[0])
        contact_id = _text(value)
    email = _text(query.get("email"))
    if email is None and (hit := first_path(data, [*spec.email_paths, "email"], looked_up)):
        email = _text(hit[1])
    if contact_id is None and email is None:
        looked = ", ".join(dict.fromkeys(["query contact_id", "query email", *spec.contact_id_paths,
                                          *spec.email_paths, "contact_id", "email"]))
        raise BadDelivery(422, "missing_contact", f"no contact ID or email found (looked at {looked})",
                          field="contact_id")
    if email is not None:
        if "@" not in email or len(email) > 254 or _SPACE.search(email) or not _utf8(email):
            raise BadDelivery(422, "invalid_email", f"email {email[:60]!r} is not an address", field="email")
        email = normalize_email(email)
    if contact_id is not None:
        check_contact_id(contact_id)
    role = _text(query.get("role"))
    notify = (query.get("send_notification") or "").strip().lower() in TRUE_WORDS
    return Delivery(connection, action, contact_id, email, role, notify, data, operation, text)


def event_id(spec: ConnectorSpec, headers: Mapping[str, str], body: Any) -> str | None:
    """The sender's own ID of this event, when it sends one: the ``webhook-id`` header (Standard
    Webhooks), else the header or body path the connector names (``event_id_header``,
    ``event_id_path``). None means the delivery is known by its bytes only (see ``dedupe_key``)."""
    value = headers.get("webhook-id") or (headers.get(spec.event_id_header) if spec.event_id_header else None)
    if not value and spec.event_id_path and isinstance(body, dict):
        found = get_path(body, spec.event_id_path)
        if isinstance(found, (str, int)) and not isinstance(found, bool) and found != "":
            value = str(found)
    return value or None


def dedupe_key(connection: str, query: Mapping[str, str], body: bytes, webhook_id: str | None) -> str:
    """The idempotency key: the sender's event ID when given (``event_id``), else a hash of what was
    sent. The queue treats the two differently: an event ID is a duplicate within the window, a
    hash only while the first job still waits (``bridge.store.queue.enqueue``).

    Credentials are left out so that rotating the access key does not defeat de-duplication.
    """
    if webhook_id:
        return f"wh:{connection}:{webhook_id[:200]}"
    # One sha256 call over connection, sorted query and body (the same digest as feeding them in turn).
    parts = [connection.encode()]
    for key, value in sorted(query.items()):
        if key not in SECRET_PARAMS:
            parts.append(b"\x00%s=%s" % (key.encode(), value.encode()))
    parts.append(b"\x01")
    parts.append(body)
    return "h:" + hashlib.sha256(b"".join(parts)).hexdigest()[:40]


def public_query(query: Mapping[str, str]) -> dict[str, str]:
    """The query without credentials: what may be stored and shown."""
    return {k: v for k, v in query.items() if k not in SECRET_PARAMS}
