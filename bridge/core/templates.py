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


class UnsafePathValue(ValueError):
    """A value that would change a URL path's segments if placed in it (``.`` or ``..``)."""


def render_text(template: str, values: dict[str, Any], *, url_quote: bool = False) -> str:
    """Interpolate merge fields into a string; ``url_quote`` percent-encodes each value (slashes
    included) and refuses ``.`` and ``..``, which URL normalisation (yarl, RFC 3986 section 5.2.4)
    would turn into a move up the path even when percent-encoded."""

    def sub(m: re.Match[str]) -> str:
        text = str(_lookup(values, m.group(1)))
        if not url_quote:
            return text
        if text.strip() in (".", ".."):
            raise UnsafePathValue(f"{{{{{m.group(1)}}}}} is {text!r}, which cannot be placed in a URL path")
        return quote(text, safe="")

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


_BRACES = re.compile(r"\{\{|\}\}")


def template_strings(template: Any) -> list[str]:
    """Every string of a JSON template, keys included, in order."""
    if isinstance(template, str):
        return [template]
    if isinstance(template, dict):
        return [s for k, v in template.items() for s in (str(k), *template_strings(v))]
    if isinstance(template, list):
        return [s for v in template for s in template_strings(v)]
    return []


def template_problems(template: Any, known: set[str], secrets: set[str]) -> list[str]:
    """What is wrong with a template, given the merge fields its request fills (``known``) and the
    connection's secret names: malformed braces (a hole that would be sent as text) and unknown
    names. Empty when the template can always be rendered."""
    problems = []
    for text in template_strings(template):
        if _BRACES.search(_FIELD.sub("", text)):
            problems.append(f"malformed merge field in {text[:80]!r} (write {{{{name}}}})")
    for name in sorted(merge_fields(template)):
        if name.startswith("secrets."):
            if name[len("secrets."):] not in secrets:
                have = ", ".join(sorted(secrets)) or "none"
                problems.append(f"{{{{{name}}}}} names a secret the connection does not have "
                                f"(secrets: {have})")
        elif name not in known:
            problems.append(f"unknown merge field {{{{{name}}}}} "
                            f"(this request fills {', '.join(sorted(known))})")
    return problems


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
