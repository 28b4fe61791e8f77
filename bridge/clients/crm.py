"""A CRM client driven entirely by a connector description (``bridge.core.connector``).

There is no per-CRM code: fetching a contact, writing a field back and managing webhook
subscriptions are requests described in configuration, filled with ``{{merge_fields}}``.
"""

from __future__ import annotations

from typing import Any, Callable

import aiohttp

from bridge.clients.gate import RateGate
from bridge.clients.http import redacting, retrying, send
from bridge.core.connector import ConnectorSpec, RequestSpec
from bridge.core.paths import get_path
from bridge.core.templates import UnsafePathValue, render, render_text
from bridge.errors import AuthFailed, NotFound, Permanent, RateLimited, RemoteError, Transient
from bridge.settings import ConnectionSettings, WorkerSettings


class CrmClient:
    """Requests to one CRM connection. ``session`` is shared by all connections."""

    def __init__(self, name: str, conn: ConnectionSettings, session: aiohttp.ClientSession,
                 retry: WorkerSettings, timeout_s: float = 15.0,
                 observer: Callable[[str, bool], None] | None = None) -> None:
        self.name = name
        self.spec: ConnectorSpec = conn.spec()
        self._secrets = conn.secret_values()
        self._session = session
        self._retry = retry
        self._timeout_s = timeout_s
        self.service = f"crm:{name}"
        # Told (connection, up) after each request: up unless unreachable or refusing our credentials.
        self._observer = observer
        self.gate = RateGate(self.service)

    def _values(self, **values: Any) -> dict[str, Any]:
        return {**values, "secrets": self._secrets}

    def build(self, request: RequestSpec, values: dict[str, Any]) -> dict[str, Any]:
        """The concrete request (method, url, headers, params, json) for a template and merge values."""
        merged = self._values(**values)
        try:
            url = self.spec.base_url.rstrip("/") + render_text(request.path, merged, url_quote=True)
        except UnsafePathValue as exc:
            raise Permanent(self.service, str(exc)) from None
        out: dict[str, Any] = {
            "method": request.method,
            "url": url,
            "headers": {k: render_text(v, merged) for k, v in self.spec.headers.items()},
        }
        if request.query:
            out["params"] = {k: str(render(v, merged)) for k, v in request.query.items()}
        if request.json_body is not None:
            out["json"] = render(request.json_body, merged)
        return out

    async def request(self, request: RequestSpec, values: dict[str, Any],
                      sent_secrets: tuple[str, ...] = ()) -> Any:
        """Send one described request with retries; return the decoded answer. The connection's
        secrets and ``sent_secrets`` (e.g. written-back values) are scrubbed from every error."""
        built = self.build(request, values)
        redact = (*self._secrets.values(), *sent_secrets)
        try:
            async for attempt in retrying(self._retry.http_attempts, self._retry.http_backoff_s,
                                          self._retry.http_max_wait_s):
                with attempt, redacting(redact):
                    # A Retry-After any job got from this CRM holds back every call to it.
                    await self.gate.enter(self._retry.http_max_wait_s)
                    try:
                        answer = await send(
                            self._session, self.service, built["method"], built["url"],
                            timeout_s=self._timeout_s,
                            auth_markers=self.spec.auth_error_markers,
                            not_found_markers=self.spec.not_found_markers,
                            headers=built["headers"], params=built.get("params"), json=built.get("json"),
                        )
                    except RateLimited as exc:
                        self.gate.shut(exc)
                        raise
        except RemoteError as exc:
            if self._observer is not None:
                down = isinstance(exc, (Transient, AuthFailed)) and not isinstance(exc, RateLimited)
                self._observer(self.name, not down)
            raise
        if self._observer is not None:
            self._observer(self.name, True)
        return answer

    async def fetch_contact(self, contact_id: str | None, email: str | None) -> dict[str, Any] | None:
        """The contact record from the CRM, or None when the CRM has no such contact."""
        if self.spec.fetch is None:
            raise Permanent(self.service, "this connector has no fetch request")
        try:
            data = await self.request(self.spec.fetch,
                                      {"contact_id": contact_id or email or "", "email": email or ""})
        except NotFound:
            return None
        record = get_path(data, self.spec.fetch.response_path) if self.spec.fetch.response_path else data
        if not isinstance(record, dict):
            raise Permanent(self.service,
                            f"fetch answer has no object at {self.spec.fetch.response_path or 'the top'}")
        return record

    async def write_back(self, contact_id: str | None, email: str | None, attributes: dict[str, Any]) -> Any:
        """Write fields (e.g. the generated password) to the contact; no written value appears in
        the errors it raises (nor in the retry log lines)."""
        if self.spec.write_back is None:
            raise Permanent(self.service, "this connector has no write_back request")
        written = tuple(v for v in attributes.values() if isinstance(v, str))
        return await self.request(
            self.spec.write_back,
            {"contact_id": contact_id or email or "", "email": email or "", "attributes": attributes},
            sent_secrets=written,
        )
