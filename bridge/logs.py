"""structlog set-up: one JSON event per state change, secrets never printed.

Two guards: keys that name a secret are masked whatever their value, and the text of every
configured secret (access keys, the application password, CRM tokens) is scrubbed from any
string value, so a secret that slips into an error message still does not reach the log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any, Iterable

import structlog

MASK = "***"
SECRET_KEY = re.compile(r"pass(word)?|secret|token|access_key|authorization|api_key|app_key|credential", re.I)


class Redactor:
    """A structlog processor masking secret-named keys and scrubbing known secret values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self._secret_key: dict[Any, bool] = {}  # memo of SECRET_KEY per key name (event keys are few)
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Also scrub these values (longest first so a secret containing another is fully masked)."""
        merged = {s for s in (*self._secrets, *secrets) if s and len(s) >= 4}
        self._secrets = sorted(merged, key=len, reverse=True)

    def _is_secret_key(self, key: Any) -> bool:
        hit = self._secret_key.get(key)
        if hit is None:
            hit = SECRET_KEY.search(str(key)) is not None
            if len(self._secret_key) < 4096:
                self._secret_key[key] = hit
        return hit

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {k: (MASK if v and self._is_secret_key(k) else self.scrub(v)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub(v) for v in value]
        return value

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        return self.scrub(event)


_JSON = json.JSONEncoder(default=repr)  # one encoder for every event (json.dumps(default=...) builds one per call)


def _to_json(event: dict[str, Any], **_: Any) -> str:
    return _JSON.encode(event)


def configure(level: str = "info", fmt: str = "json", secrets: Iterable[str] = (), stream: Any = None) -> Redactor:
    """Configure structlog and the standard library logging; return the redactor to feed secrets."""
    redactor = Redactor(secrets)
    renderer = structlog.processors.JSONRenderer(serializer=_to_json) if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,  # configure() may run again (tests, CLI)
    )
    # aiohttp's access log would print query strings, i.e. access keys: keep it quiet.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return redactor
