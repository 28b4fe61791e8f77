"""structlog set-up: one JSON event per state change, secrets never printed.

Two guards: keys that name a secret are masked whatever their value, and the text of every
configured secret (access keys, the application password, CRM tokens) is scrubbed from any
string value, so a secret that slips into an error message still does not reach the log.

The standard library's loggers (aiohttp.server, aiohttp.web, aiohttp.access, asyncio, warnings)
go through the same processors: one JSON line each, redacted like the bridge's own events.
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
# A key in a URL that reached a message (a request line, a URL in an error): masked even when it is
# not a configured key (a mistyped key is still someone's key).
_KEY_IN_URL = re.compile(r"(access_key=)[^&\s'\"]+", re.I)
SECRET_KEY = re.compile(r"pass(word)?|secret|token|access_key|authorization|api_key|app_key|credential", re.I)


def _maskable(value: Any) -> bool:
    # A flag such as has_secret=True says nothing secret; any other non-empty value is masked whole.
    return bool(value) and not isinstance(value, bool)


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

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values scrubbed, longest first."""
        return tuple(self._secrets)

    def scrub(self, value: Any) -> Any:
        """``value`` with every known secret replaced by ``***`` and secret-named keys masked, at any
        depth."""
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, MASK)
            if "access_key=" in value:
                value = _KEY_IN_URL.sub(r"\1" + MASK, value)
            return value
        if isinstance(value, dict):
            return {k: (MASK if _maskable(v) and self._is_secret_key(k) else self.scrub(v))
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub(v) for v in value]
        return value

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        return self.scrub(event)


def scrub_text(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with each of ``secrets`` (those of 4 characters or more) replaced by ``***``, longest
    first."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_secret_fields(value: Any) -> Any:
    """A copy of a JSON-like value with every secret-named key's value (``password``, ``user_pass``,
    ``token``, ``api_key``...: ``SECRET_KEY``) masked, at any depth; for showing payloads."""
    if isinstance(value, dict):
        return {k: (MASK if _maskable(v) and SECRET_KEY.search(str(k)) else mask_secret_fields(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secret_fields(v) for v in value]
    return value


# one encoder for every event (json.dumps(default=...) builds one per call)
_JSON = json.JSONEncoder(default=repr)


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
    logging.getLogger().setLevel(level_number(level))  # the standard library's loggers too


class _StdlibHandler(logging.StreamHandler):
    """The handler ``configure`` puts on the root logger (recognised, so a new configure replaces it)."""


def _stdlib_event(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    # A record's message, arguments merged ("Error handling request from %s"), is the event; the
    # record itself is dropped so that neither its raw arguments nor repr() reach the line.
    record = event.pop("_record", None)
    event.pop("_from_structlog", None)
    if record is not None:
        event["logger"] = record.name
    return event


def _route_stdlib(level: str, processors: list[Any], stream: Any) -> None:
    """Send every standard-library log record through ``processors`` (redactor and renderer last)."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
        ],
        processors=[_stdlib_event, *processors],
        pass_foreign_args=False,
    )
    handler = _StdlibHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.getLevelName(level.upper()))
    logging.captureWarnings(False)  # then True again: hook the current warnings.showwarning
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """An exception nothing caught ends the process as one redacted JSON event, not a bare traceback."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("bridge").critical("process.uncaught_exception", exc_info=(kind, value, tb))


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
    renderer = (structlog.processors.JSONRenderer(serializer=_to_json) if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    stream = stream or sys.stderr
    _route_stdlib(level, [redactor, renderer, *([_syslog_prefix] if journal else [])], stream)
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
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,  # configure() may run again (tests, CLI)
    )
    # aiohttp's access log would print query strings, i.e. access keys: keep it quiet (and were it
    # turned on, the redactor still scrubs the keys from its lines).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return redactor
