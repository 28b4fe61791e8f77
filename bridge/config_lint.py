"""Checks of a *valid* settings object that the model itself does not make: values that parse but
cannot work (no access key or connection for ``serve``, a connector that sends requests without a
base URL, a write-back without a request to do it) and risky ones (plain http to a remote host).
Pure: no network, no files.

``serve`` refuses to start on any ``problem`` here (exit 78), so a configuration that would crash
later is stopped with its key named; ``doctor`` lists them with the validation errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

from bridge.core.connector import ConnectorSpec, RequestSpec
from bridge.settings import REQUEST_FIELDS, ConnectionSettings, Settings

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclass
class Lint:
    """One finding: ``severity`` is ``problem`` (will not work) or ``warning`` (works, but risky)."""

    key: str
    message: str
    fix: str
    severity: str = "problem"


def _cleartext(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "") not in LOOPBACK


def _requests(spec: ConnectorSpec) -> Iterator[tuple[str, RequestSpec]]:
    for name in REQUEST_FIELDS:
        request = getattr(spec, name, None)
        if request is not None:
            yield name, request


def _connection(name: str, conn: ConnectionSettings, public_url: str | None) -> Iterator[Lint]:
    spec = conn.spec()
    key = f"connections.{name}"
    uses_api = any(True for _ in _requests(spec))
    if uses_api and not spec.base_url:
        yield Lint(f"{key}.base_url", "not set, but the connector sends requests to the CRM",
                   "set the CRM's API base URL, e.g. https://YOURAPP.user.com/api/public")
    elif spec.base_url and _cleartext(spec.base_url):
        yield Lint(f"{key}.base_url", "plain http to a remote host: the CRM token travels unencrypted",
                   "use https://", "warning")
    if (conn.return_password_field or conn.return_fields) and spec.write_back is None:
        yield Lint(f"{key}.return_password_field", "set, but the connector has no write_back request",
                   f"describe {key}.connector.write_back, or remove the return fields")
    if spec.webhook_create is not None and not public_url:
        yield Lint("server.public_url", f"not set, but `webhooks register {name}` needs it",
                   "set server.public_url to the address CRMs reach the bridge at (or pass --url)", "warning")


def lint(settings: Settings) -> list[Lint]:
    """Every problem and warning of a settings object that validated (see the module doc)."""
    out: list[Lint] = []
    wp = settings.wordpress
    if _cleartext(wp.url):
        out.append(Lint("wordpress.url",
                        "plain http to a remote host: the application password travels in clear",
                        "use https://", "warning"))
    if not wp.application_password.get_secret_value():
        out.append(Lint("wordpress.application_password", "not set",
                        "create one under Users → Profile → Application Passwords for wordpress.username"))
    if wp.allowed_roles is not None and wp.default_role not in wp.allowed_roles:
        out.append(Lint("wordpress.default_role", f"{wp.default_role!r} is not in wordpress.allowed_roles",
                        "add it to allowed_roles or pick one of them", "warning"))
    server = settings.server
    if not settings.has_access_keys():
        out.append(Lint("server.access_keys",
                        "empty (and no connection has access_keys): `serve` refuses to start",
                        "set at least one key of 8 or more characters "
                        "(WPSB_SERVER__ACCESS_KEYS='[\"...\"]')"))
    if server.public_url and urlsplit(server.public_url).scheme != "https":
        out.append(Lint("server.public_url", "not https: CRMs would send the access key in clear",
                        "put a TLS proxy in front (docs/production.md) and use its https:// address",
                        "warning"))
    if not settings.connections:
        out.append(Lint("connections", "none configured: `serve` refuses to start without one",
                        "add a [connections.NAME] table (wp-sync-bridge print-file config shows them)"))
    for name, conn in settings.connections.items():
        out.extend(_connection(name, conn, server.public_url))
    seen: set[tuple[str, str]] = set()
    return [x for x in out if (x.key, x.message) not in seen and not seen.add((x.key, x.message))]
