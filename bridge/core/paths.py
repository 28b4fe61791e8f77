"""A tiny JSON path language for connector descriptions.

Syntax (dot separated steps):

- ``data.user.data.email``      object keys
- ``tags.0``                     a list index
- ``tags[].name``                every element of a list, then a key (gives a list)
- ``attributes[name_std=city].value``   the first list element whose key equals a value

Kept deliberately small so a configuration stays readable; all functions are pure.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_STEP = re.compile(r"^(?P<key>[^\[\]]*)(?:\[(?P<sel>[^\]]*)\])?$")


class PathError(ValueError):
    """A path that is not valid in this syntax."""


_MISSING = object()


def split_path(path: str) -> list[tuple[str, str | None]]:
    """Split a path into (key, selector) steps; raises PathError on bad syntax."""
    return list(_split(path))


@lru_cache(maxsize=4096)
def _split(path: str) -> tuple[tuple[str, str | None], ...]:
    # Paths come from configuration (a few dozen): every delivery looks the same ones up.
    if not path or path.strip() != path:
        raise PathError(f"invalid path {path!r}")
    steps = []
    for part in path.split("."):
        m = _STEP.match(part)
        if m is None or (not m.group("key") and m.group("sel") is None):
            raise PathError(f"invalid step {part!r} in path {path!r}")
        sel = m.group("sel")
        if sel is not None and sel != "" and "=" not in sel:
            raise PathError(f"selector [{sel}] in {path!r} must be [] or [key=value]")
        steps.append((m.group("key"), sel))
    return tuple(steps)


def _step(value: Any, key: str) -> Any:
    if key == "":
        return value
    if isinstance(value, dict):
        return value.get(key, _MISSING)
    if isinstance(value, list) and key.isdigit():
        idx = int(key)
        return value[idx] if idx < len(value) else _MISSING
    return _MISSING


def _select(value: Any, sel: str) -> Any:
    if not isinstance(value, list):
        return _MISSING
    if sel == "":
        return value
    k, _, v = sel.partition("=")
    for item in value:
        if isinstance(item, dict) and str(item.get(k)) == v:
            return item
    return _MISSING


def get_path(document: Any, path: str, default: Any = None) -> Any:
    """Return the value at ``path`` in ``document`` or ``default`` when any step is missing."""
    value: Any = document
    steps = _split(path)
    for i, (key, sel) in enumerate(steps):
        # Object keys are the common step (every delivery looks its contact up this way): inline.
        if type(value) is dict and key:
            value = value.get(key, _MISSING)
        else:
            value = _step(value, key)
        if value is _MISSING:
            return default
        if sel is None:
            continue
        value = _select(value, sel)
        if value is _MISSING:
            return default
        if sel == "":
            rest = ".".join(
                k + (f"[{s}]" if s is not None else "") for k, s in steps[i + 1 :]
            )
            if not rest:
                return value
            out = [get_path(item, rest, _MISSING) for item in value]
            return [item for item in out if item is not _MISSING]
    return value


def first_path(document: Any, paths: list[str],
               looked_up: dict[str, Any] | None = None) -> tuple[str, Any] | None:
    """The first of ``paths`` that holds a non-empty value, as (path, value), or None.
    ``looked_up`` (path → value) is read and filled, so a path shared by several calls is walked once."""
    for path in paths:
        if looked_up is None:
            value = get_path(document, path)
        elif (value := looked_up.get(path, _MISSING)) is _MISSING:
            value = looked_up[path] = get_path(document, path)
        if value not in (None, "", [], {}):
            return path, value
    return None


def walk_leaves(document: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf (scalar) of a JSON document with its path, in document order (for field discovery)."""
    out: list[tuple[str, Any]] = []
    if isinstance(document, dict):
        for key, value in document.items():
            out.extend(walk_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(document, list):
        if not document:
            out.append((prefix, []))
        for idx, value in enumerate(document):
            out.extend(walk_leaves(value, f"{prefix}.{idx}" if prefix else str(idx)))
    else:
        out.append((prefix, document))
    return out
