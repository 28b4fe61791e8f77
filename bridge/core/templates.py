"""``{{merge_field}}`` templates for connector requests (URLs, headers, JSON bodies).

A string that is exactly one merge field is replaced by the raw value (which may be an object,
so a body can carry a whole attribute map); otherwise values are interpolated as text. Names may
be dotted (``{{secrets.token}}``). An unknown merge field is an error naming it, never a silent
empty string: a request with a hole in it would go to the wrong place.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

_FIELD = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")


class TemplateError(KeyError):
    """A template names a merge field that has no value."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown merge field {{{{{self.name}}}}}"


def _lookup(values: dict[str, Any], name: str) -> Any:
    value: Any = values
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(name)
        value = value[part]
    return value


def render_text(template: str, values: dict[str, Any], *, url_quote: bool = False) -> str:
    """Interpolate merge fields into a string; ``url_quote`` percent-encodes each value."""

    def sub(m: re.Match[str]) -> str:
        text = str(_lookup(values, m.group(1)))
        return quote(text, safe="") if url_quote else text

    return _FIELD.sub(sub, template)


def render(template: Any, values: dict[str, Any]) -> Any:
    """Render a JSON template (dicts, lists and strings, keys included) with merge values."""
    if isinstance(template, str):
        whole = _FIELD.fullmatch(template.strip())
        if whole:
            return _lookup(values, whole.group(1))
        return render_text(template, values)
    if isinstance(template, dict):
        return {render_text(str(k), values): render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, values) for v in template]
    return template


def merge_fields(template: Any) -> set[str]:
    """Every merge-field name a template uses (to validate configurations at start-up)."""
    if isinstance(template, str):
        return set(_FIELD.findall(template))
    if isinstance(template, dict):
        names: set[str] = set()
        for k, v in template.items():
            names |= merge_fields(str(k)) | merge_fields(v)
        return names
    if isinstance(template, list):
        return set().union(*(merge_fields(v) for v in template)) if template else set()
    return set()
