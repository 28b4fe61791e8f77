"""Reading HTTP answers into values or typed errors, in one place, and the tenacity policy.

Nothing else in the bridge branches on status codes: clients call ``read_response`` and
``retrying`` retries on ``Transient`` (which includes ``RateLimited``) only.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import random
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

import aiohttp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from bridge.errors import AuthFailed, NotFound, Permanent, RateLimited, RemoteError, Transient
from bridge.logs import scrub_text

log = structlog.get_logger("bridge.http")

TRANSIENT_STATUSES = {408, 425, 502, 503, 504}
# WordPress answers 500 for a duplicate email or login on user creation: not worth retrying.
PERMANENT_CODES = {"existing_user_email", "existing_user_login", "rest_user_invalid_role",
                   "rest_invalid_param"}


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization: Basic`` header value (application passwords use HTTP basic auth)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now_s if now_s is not None else time.time()))


def _error_text(data: Any, raw: bytes) -> tuple[str, str | None]:
    """A short message and code from an error body (WordPress, Customerly, DRF and generic styles)."""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return (str(err.get("message") or err)[:200],
                    str(err.get("code")) if err.get("code") is not None else None)
        if isinstance(err, str):
            return err[:200], None
        if "message" in data:
            return str(data["message"])[:200], str(data["code"]) if data.get("code") is not None else None
        if "detail" in data:
            return str(data["detail"])[:200], None
    return raw[:200].decode("utf-8", "replace").strip() or "(empty body)", None


def read_response(
    service: str,
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    *,
    auth_markers: Iterable[str] = (),
    not_found_markers: Iterable[str] = (),
) -> Any:
    """The decoded JSON of a 2xx answer (None when empty), else the matching typed error.

    ``auth_markers``/``not_found_markers`` are texts that give an answer its meaning whatever
    the status (Customerly reports a bad token as HTTP 500 "Access token not found.").
    """
    try:
        data = json.loads(raw) if raw.strip() else None
    except ValueError:
        data = None
    if 200 <= status < 300:
        if data is None and raw.strip():
            raise Transient(service, f"HTTP {status} with a body that is not JSON", status=status)
        if isinstance(data, dict) and isinstance(data.get("error"), dict) and any(
            m in str(data["error"].get("message", "")) for m in not_found_markers
        ):
            raise NotFound(service, _error_text(data, raw)[0], status=status)
        return data
    message, code = _error_text(data, raw)
    text = raw[:2000].decode("utf-8", "replace")
    if any(m in text for m in auth_markers):
        raise AuthFailed(service, f"credentials refused: {message}", status=status, code=code)
    if any(m in text for m in not_found_markers) or status == 404:
        raise NotFound(service, message, status=status, code=code)
    if status in (401, 403):
        raise AuthFailed(service, f"credentials refused (HTTP {status}): {message}", status=status, code=code)
    if status == 429 or (status == 503 and "retry-after" in {k.lower() for k in headers}):
        retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
        raise RateLimited(service, f"HTTP {status}: {message}", retry_after, status=status)
    if status in TRANSIENT_STATUSES:
        raise Transient(service, f"HTTP {status}: {message}", status=status, code=code)
    if status >= 500:
        if code in PERMANENT_CODES:
            raise Permanent(service, f"HTTP {status} {code}: {message}", status=status, code=code)
        raise Transient(service, f"HTTP {status}: {message}", status=status, code=code)
    raise Permanent(service, f"HTTP {status}{' ' + code if code else ''}: {message}", status=status,
                    code=code)


async def send(
    session: aiohttp.ClientSession,
    service: str,
    method: str,
    url: str,
    *,
    timeout_s: float,
    auth_markers: Iterable[str] = (),
    not_found_markers: Iterable[str] = (),
    **kwargs: Any,
) -> Any:
    """One HTTP request read by ``read_response``; connection failures and timeouts are Transient."""
    try:
        async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                   **kwargs) as resp:
            raw = await resp.read()
            return read_response(service, resp.status, resp.headers, raw,
                                 auth_markers=auth_markers, not_found_markers=not_found_markers)
    except asyncio.TimeoutError:
        raise Transient(service, f"no answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise Transient(service, f"connection failed: {type(exc).__name__}") from None


def redact_error(exc: RemoteError, values: Iterable[str | None]) -> RemoteError:
    """Scrub ``values`` (secrets the request carried) from the error's message, code and text, in
    place: a remote that echoes the request in its error body (Customerly answering 400 with the
    posted attributes) must not carry a password or token into logs, ``last_error`` or the CLI."""
    values = [v for v in values if isinstance(v, str)]
    if values:
        exc.message = scrub_text(exc.message, values)
        if exc.code is not None:
            exc.code = scrub_text(str(exc.code), values)
        exc.args = tuple(scrub_text(a, values) if isinstance(a, str) else a for a in exc.args)
    return exc


@contextmanager
def redacting(values: Iterable[str | None]) -> Iterator[None]:
    """Scrub ``values`` from any RemoteError leaving the block. Put it inside tenacity's
    ``with attempt`` so that the ``http.retry`` line and the final error are already clean."""
    try:
        yield
    except RemoteError as exc:
        raise redact_error(exc, values)


def retrying(attempts: int, backoff_s: float, max_wait_s: float) -> AsyncRetrying:
    """tenacity for seconds within one job run: retry Transient errors with jittered backoff,
    honouring Retry-After; a Retry-After longer than ``max_wait_s`` is left to the queue."""

    def should_retry(exc: BaseException) -> bool:
        if not isinstance(exc, Transient):
            return False
        retry_after = getattr(exc, "retry_after_s", None)
        return retry_after is None or retry_after <= max_wait_s

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after_s", None) or 0.0
        exp = min(max_wait_s, backoff_s * 2 ** (state.attempt_number - 1))
        return max(retry_after, random.uniform(exp / 2, exp))

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("http.retry", attempt=state.attempt_number, error=str(exc),
                 wait_s=round(state.next_action.sleep, 3) if state.next_action else None)

    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        retry=retry_if_exception(should_retry),
        wait=wait,
        before_sleep=before_sleep,
        reraise=True,
    )
