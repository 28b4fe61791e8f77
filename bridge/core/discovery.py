"""Field discovery (the Cyclr pattern of seed 000): what fields a CRM really sends, and a mapping
block to paste into the configuration. Pure functions over stored sample deliveries."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from bridge.core.paths import walk_leaves

SECRET_FIELD = re.compile(r"pass(word)?|pwd|secret|token|api_?key|access_?key|auth", re.I)
MASK = "***"

# Guesses of the WordPress field a CRM field name stands for.
_GUESSES = [
    (re.compile(r"(^|[._])e-?mail$", re.I), "user_email"),
    (re.compile(r"first_?name|given_?name", re.I), "first_name"),
    (re.compile(r"last_?name|family_?name|surname", re.I), "last_name"),
    (re.compile(r"(^|[._])(display_?name|name)$", re.I), "display_name"),
    (re.compile(r"user_?login|username", re.I), "user_login"),
]


def mask(document: Any) -> Any:
    """A copy with values of secret- or password-looking keys replaced by ``***``."""
    if isinstance(document, dict):
        return {k: (MASK if SECRET_FIELD.search(str(k)) and v not in (None, "") else mask(v))
                for k, v in document.items()}
    if isinstance(document, list):
        return [mask(v) for v in document]
    return document


def shape(document: Any) -> str:
    """A short hash of the document's field paths (list indexes folded): same shape, same hash."""
    paths = sorted({re.sub(r"\.\d+(?=\.|$)", ".N", p) for p, _ in walk_leaves(document)})
    return hashlib.sha1(json.dumps(paths).encode()).hexdigest()[:16]


def guess_target(path: str) -> str:
    """The WordPress field a path probably maps to, else ``meta.<last part>``."""
    for pattern, target in _GUESSES:
        if pattern.search(path):
            return target
    last = re.sub(r"[^A-Za-z0-9_]", "_", path.split(".")[-1]) or "field"
    return f"meta.{last}"


def discover(samples: list[Any]) -> list[tuple[str, Any]]:
    """Every field path seen across samples with one example value (newest sample first)."""
    seen: dict[str, Any] = {}
    for sample in samples:
        for path, value in walk_leaves(sample):
            if path and path not in seen:
                seen[path] = value
    return sorted(seen.items())


def mapping_block(connection: str, fields: list[tuple[str, Any]], record_prefix: str | None = None) -> str:
    """A ready-to-paste ``[connections.NAME.fields]`` TOML block for the discovered fields."""
    lines = [f"[connections.{connection}.fields]"]
    for path, _ in fields:
        rel = path
        if record_prefix:
            if not path.startswith(record_prefix + "."):
                continue
            rel = path[len(record_prefix) + 1 :]
        if re.search(r"\.\d+(\.|$)", rel):
            continue  # list items: map the list itself via tags_path instead
        lines.append(f'"{rel}" = "{guess_target(rel)}"')
    return "\n".join(lines)
