"""The bridge's error types. Data lives on the exception's attributes, not in its message.

Retries key on these types only (STYLE.md §2): ``Transient`` and ``RateLimited`` are retried
(tenacity within a run, the queue across runs); ``Permanent`` and ``AuthFailed`` go to the
dead-letter state at once.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration is invalid; ``key`` names the offending setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class BadDelivery(BridgeError):
    """A webhook delivery that cannot be accepted (answered 4xx, kept for replay when authenticated).

    ``status`` is the HTTP status to answer, ``code`` a stable machine-readable reason and
    ``field`` the part of the request that is wrong, when there is one.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def as_json(self) -> dict:
        """The JSON body of the 4xx answer."""
        body = {"success": False, "error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class RemoteError(BridgeError):
    """A remote service (WordPress or a CRM) answered with an error or could not be reached."""

    retryable = False

    def __init__(self, service: str, message: str, status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message
        self.status = status
        self.code = code


class Transient(RemoteError):
    """A failure worth retrying: connection error, timeout, 502/503/504."""

    retryable = True


class RateLimited(Transient):
    """The remote asked us to slow down; ``retry_after_s`` is its Retry-After, if it gave one."""

    def __init__(self, service: str, message: str, retry_after_s: float | None,
                 status: int | None = 429) -> None:
        super().__init__(service, message, status=status, code="rate_limited")
        self.retry_after_s = retry_after_s


class Permanent(RemoteError):
    """A failure that repeating will not fix: invalid data, a missing resource, a conflict."""


class AuthFailed(Permanent):
    """The remote refused our credentials (bad token, bad application password)."""


class NotFound(Permanent):
    """The remote has no such resource (e.g. the CRM has no such contact)."""


class CannotStart(BridgeError):
    """The daemon could not take a resource it needs: ``what`` is ``database`` or ``listen``."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"cannot open the {what}: {reason}")
        self.what = what
        self.reason = reason
