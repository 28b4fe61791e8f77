"""structlog set-up: one JSON event per state change, secrets never printed.

Two guards: keys that name a secret are masked whatever their value, and the text of every
configured secret (access keys, the application password, CRM tokens) is scrubbed from any
string value, so a secret that slips into an error message still does not reach the log.
"""

from __future__ import annotations

import json
import logging
import os
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


# syslog(3) priorities for each structlog method: `journalctl -p err` then shows job.dead.
PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}
LEVELS = ("debug", "info", "warning", "error", "critical")


def level_number(level: str) -> int:
    """The logging level number of a ``log_level`` setting; ValueError names the accepted ones."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log_level {level!r} is not one of {', '.join(LEVELS)}")
    return logging.getLevelName(level.upper())


def stderr_is_journal(environ: Any = None) -> bool:
    """True when stderr is the journal's stream: ``$JOURNAL_STREAM`` ("DEV:INODE") names the very
    file of fd 2 (systemd.exec(5), "$JOURNAL_STREAM": compare it, a child may have redirected)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _syslog_prefix(logger: Any, method: str, rendered: str) -> str:
    """After the renderer: ``<N>`` in front of the line, read by the journal (SyslogLevelPrefix=yes)."""
    return f"<{PRIORITY.get(method, 6)}>{rendered}"


def set_level(level: str) -> None:
    """Change the level of every logger from now on (SIGHUP reload); ValueError on an unknown one."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level_number(level)))


def configure(level: str = "info", fmt: str = "json", secrets: Iterable[str] = (), stream: Any = None,
              journal: bool | None = None) -> Redactor:
    """Configure structlog and the standard library logging; return the redactor to feed secrets.

    ``journal`` prefixes each line with its syslog priority; None means "when stderr is the journal"
    (only when logging to stderr). Raises ValueError for an unknown ``level``.
    """
    number = level_number(level)
    if journal is None:
        journal = stream is None and stderr_is_journal()
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
            *([_syslog_prefix] if journal else []),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,  # configure() may run again (tests, CLI)
    )
    # aiohttp's access log would print query strings, i.e. access keys: keep it quiet.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return redactor
