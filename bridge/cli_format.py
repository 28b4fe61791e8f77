"""Pure helpers of the operator CLI: reading ``--since`` and writing times people can read."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.I)
_UNITS_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """A point in time from ``2h``/``30m``/``7d`` (ago), ``2026-11-30`` (UTC midnight) or an ISO
    date-time (UTC unless it says otherwise), as a Unix time. Raises ValueError naming the forms."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS_S[m.group(2).lower()]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r}: use a duration such as 30m, 2h, 7d, "
                         "or a date such as 2026-11-30") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def ago(then: float, now: float | None = None) -> str:
    """A short relative age: ``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago``."""
    delta = (time.time() if now is None else now) - then
    if delta < 0:
        return f"in {_span(-delta)}"
    return f"{_span(delta)} ago"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit}"
    return f"{seconds:.0f} s"


def when(ts: float | None, now: float | None = None) -> str:
    """``2026-12-01 09:50:12Z (5 min ago)``; ``-`` for no time."""
    if ts is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))
    return f"{stamp} ({ago(ts, now)})"


def iso(ts: float | None) -> str | None:
    """An ISO 8601 UTC time for JSON output."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
