"""The XML-RPC transport: the plugin's ``wpsb.*`` methods through python-wordpress-xmlrpc.

The library (2014) is blocking, so calls run in a small thread pool, one client per thread
(``ServerProxy`` is not thread-safe). It imports ``collections.Iterable``, gone since Python 3.10:
alias it before import (shared/reference/wordpress.md).
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import http.client
import socket
import threading
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bridge.clients.http import redacting, retrying
from bridge.clients.wordpress import UpsertRequest, UpsertResult, _roles, batch_passwords, read_batch
from bridge.errors import AuthFailed, NotFound, Permanent, RateLimited, RemoteError, Transient
from bridge.settings import Settings

if not hasattr(collections, "Iterable"):
    collections.Iterable = collections.abc.Iterable  # type: ignore[attr-defined]

from wordpress_xmlrpc import AuthenticatedMethod, Client  # noqa: E402
from wordpress_xmlrpc.exceptions import (InvalidCredentialsError, ServerConnectionError,  # noqa: E402
                                         UnsupportedXmlrpcMethodError)

SERVICE = "wordpress-xmlrpc"


class _Status(AuthenticatedMethod):
    method_name = "wpsb.status"


class _Roles(AuthenticatedMethod):
    method_name = "wpsb.getRoles"


class _Lookup(AuthenticatedMethod):
    method_name = "wpsb.lookupUser"
    method_args = ("args",)


class _Upsert(AuthenticatedMethod):
    method_name = "wpsb.upsertUser"
    method_args = ("args",)


class _UpsertBatch(AuthenticatedMethod):
    method_name = "wpsb.upsertUsers"
    method_args = ("args",)


class _Delete(AuthenticatedMethod):
    method_name = "wpsb.deleteUser"
    method_args = ("args",)


class _TimeoutTransport(xmlrpc.client.Transport):
    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self._timeout_s = timeout_s

    def make_connection(self, host):  # noqa: ANN001 - stdlib signature
        conn = super().make_connection(host)
        conn.timeout = self._timeout_s
        return conn


def _plugin_code(text: str) -> str | None:
    """The plugin's error code from a fault string ("wpsb_protected_meta: ..."), as REST gives it."""
    return text.split(":", 1)[0] if text.startswith("wpsb_") and ":" in text else None


def read_fault(exc: BaseException) -> Exception:
    """The typed error for what the XML-RPC library raised (the plugin's faults carry HTTP codes)."""
    if isinstance(exc, InvalidCredentialsError):  # what the library makes of any fault 403
        text = str(exc)[:200]
        if code := _plugin_code(text):  # logged in, but the plugin refused (wpsb_forbidden, ...)
            return AuthFailed(SERVICE, text, status=403, code=code)
        return AuthFailed(SERVICE, f"credentials refused: {text}", status=403)
    if isinstance(exc, UnsupportedXmlrpcMethodError):
        return Permanent(SERVICE, f"method {exc} missing: is the wp-sync-bridge plugin installed?",
                         code="plugin_missing")
    if isinstance(exc, xmlrpc.client.Fault):
        code, text = exc.faultCode, str(exc.faultString)[:200]
        wpsb_code = _plugin_code(text)
        if code in (401, 403):
            return AuthFailed(SERVICE, text, status=code, code=wpsb_code)
        if code == 404:
            return NotFound(SERVICE, text, status=code)
        if code == 429:
            return RateLimited(SERVICE, text, None, status=code)
        if code in (502, 503, 504) or code == -32300:
            return Transient(SERVICE, text, status=code)
        return Permanent(SERVICE, f"fault {code}: {text}",
                         status=code if isinstance(code, int) and code >= 400 else None,
                         code=wpsb_code)
    if isinstance(exc, xmlrpc.client.ProtocolError):
        if exc.errcode in (401, 403):
            return AuthFailed(SERVICE, f"HTTP {exc.errcode}", status=exc.errcode)
        if exc.errcode == 429:
            return RateLimited(SERVICE, "HTTP 429", None)
        return Transient(SERVICE, f"HTTP {exc.errcode}", status=exc.errcode)
    if isinstance(exc, ServerConnectionError):
        return Transient(SERVICE, "cannot reach xmlrpc.php")
    if isinstance(exc, (OSError, http.client.HTTPException, socket.timeout)):
        return Transient(SERVICE, f"connection failed: {type(exc).__name__}")
    if isinstance(exc, xmlrpc.client.ResponseError) or isinstance(exc, ValueError):
        return Transient(SERVICE, f"unreadable answer: {type(exc).__name__}")
    return Permanent(SERVICE, f"{type(exc).__name__}: {exc}")


class XmlRpcWordPress:
    """The WordPress interface over XML-RPC."""

    def __init__(self, settings: Settings) -> None:
        wp = settings.wordpress
        self._url = wp.url.rstrip("/") + "/xmlrpc.php"
        self._user = wp.username
        self._password = wp.application_password.get_secret_value()
        self._timeout_s = wp.timeout_s
        self._retry = settings.worker
        self._pool = ThreadPoolExecutor(max_workers=wp.max_connections, thread_name_prefix="wp-xmlrpc")
        self._local = threading.local()

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = Client(self._url, self._user, self._password,
                            transport=_TimeoutTransport(self._timeout_s))
            self._local.client = client
        return client

    def _blocking(self, method: AuthenticatedMethod) -> Any:
        try:
            return self._client().call(method)
        except Exception as exc:  # every library error becomes one of ours, in read_fault
            self._local.client = None
            raise read_fault(exc) from None

    async def _call(self, method: AuthenticatedMethod, redact: tuple[str | None, ...] = ()) -> Any:
        loop = asyncio.get_running_loop()
        async for attempt in retrying(self._retry.http_attempts, self._retry.http_backoff_s,
                                      self._retry.http_max_wait_s):
            with attempt, redacting((self._password, *redact)):
                return await loop.run_in_executor(self._pool, self._blocking, method)

    async def status(self) -> dict[str, Any]:
        return await self._call(_Status())

    async def roles(self) -> dict[str, str]:
        return _roles(await self._call(_Roles()))

    async def lookup(self, email=None, contact_id=None, contact_id_key=None, tags_key=None, meta_keys=None):
        args = {k: v for k, v in {"email": email, "contact_id": contact_id, "contact_id_key": contact_id_key,
                                   "tags_key": tags_key, "meta_keys": meta_keys}.items() if v}
        data = await self._call(_Lookup(args))
        user = data.get("user")
        return user or None

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        return UpsertResult.from_json(await self._call(_Upsert(request.as_args()),
                                                       redact=(request.password,)))

    async def upsert_batch(self, requests: list[UpsertRequest]) -> list[UpsertResult | RemoteError]:
        """Several upserts in one call (``wpsb.upsertUsers``); per item a result or a typed error."""
        redact = batch_passwords(requests)
        data = await self._call(_UpsertBatch({"users": [r.as_args() for r in requests]}), redact=redact)
        return read_batch(SERVICE, data, len(requests), redact)

    async def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._call(_Delete({k: v for k, v in args.items() if v is not None}))

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
