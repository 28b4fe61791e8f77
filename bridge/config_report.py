"""Every configuration problem at once, each with the source of the bad value.

``load_settings`` stops at the first error, which is right for ``serve``; an operator fixing a
file wants them all, each naming its key and where the value came from (the file and key, or the
``WPSB_`` variable that set it). ``collect`` validates once to get all of pydantic's errors, scans
for placeholders everywhere at once, and then *salvages*: it drops each bad value (back to its
default) and validates again, so the checks that need a settings object (WordPress, CRMs) can
still run for the parts that are fine.

Messages never carry a secret's value: only pydantic's message (which does not echo the input)
or text written here.
"""

from __future__ import annotations

import copy
import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource

from bridge.config_lint import lint
from bridge.errors import ConfigError
from bridge.core.connector import build_connector
from bridge.settings import PLACEHOLDERS, ConnectionSettings, CredentialsSource, Settings, credential_key

ENV_PREFIX = "WPSB_"
# Variables of the tools around the bridge (the test stack, the CLI), not settings.
_NOT_SETTINGS = {"WPSB_CONFIG"}
_SALVAGE_ROUNDS = 12
# Validate the salvaged data without reading the environment again (it is already merged in).
_NO_ENV = "WPSB_DOCTOR_READS_NO_ENV_"


@dataclass
class ConfigProblem:
    """One bad setting: its dotted ``key``, what is wrong, where the value came from, how to fix."""

    key: str
    message: str
    source: str
    fix: str
    severity: str = "problem"


@dataclass
class ConfigReport:
    """The outcome of ``collect``: ``settings`` is the real object when there is no problem, else a
    salvaged one (bad values replaced by defaults) or None when not even that could be built."""

    problems: list[ConfigProblem] = field(default_factory=list)
    settings: Settings | None = None
    salvaged: bool = False
    config_path: Path | None = None

    def keys(self) -> set[str]:
        """The keys with a problem (warnings left out)."""
        return {p.key for p in self.problems if p.severity == "problem"}

    @property
    def ok(self) -> bool:
        """No problem (warnings allowed)."""
        return not self.keys()

    def touches(self, prefix: str) -> bool:
        """True when a problem concerns ``prefix`` or a key below it."""
        return any(k == prefix or k.startswith(prefix + ".") for k in self.keys())


def env_name(key: str) -> str:
    """The environment variable that sets a dotted key: ``server.port`` → ``WPSB_SERVER__PORT``."""
    steps = [p for p in key.split(".") if not p.isdigit()]  # a list is set as a whole (JSON)
    return ENV_PREFIX + "__".join(steps).upper()


def env_keys(environ: Mapping[str, str]) -> dict[str, str]:
    """Dotted key → the ``WPSB_`` variable that sets it, for every variable naming a setting."""
    top = set(Settings.model_fields)
    out = {}
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in _NOT_SETTINGS:
            continue
        key = upper.removeprefix(ENV_PREFIX).lower().replace("__", ".")
        if key.split(".")[0] in top:
            out[key] = name
    return out


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out[key] = v
            out.update(_flatten(v, key))
    return out


class Sources:
    """Where each key's value came from: the environment wins over the file, as in ``Settings``."""

    def __init__(self, path: Path | None, file_data: dict[str, Any], environ: Mapping[str, str]) -> None:
        self.path = path
        self.file_keys = set(_flatten(file_data))
        self.env = env_keys(environ)
        self.credentials: dict[str, str] = {}
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if directory and Path(directory).is_dir():
            for file in Path(directory).iterdir():
                self.credentials[".".join(credential_key(file.name))] = str(file)

    def of(self, key: str) -> str:
        """A human description of the source of ``key`` (or of its nearest configured parent)."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            prefix = ".".join(parts[:n])
            if prefix in self.env:
                return f"environment {self.env[prefix]}"
            if prefix in self.credentials:
                return f"credential {self.credentials[prefix]}"
            if prefix in self.file_keys:
                return f"{self.path}: {prefix}"
        return "default (not set anywhere)"


def _loc_key(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class holding the last step of ``loc`` (for 'did you mean' on unknown keys)."""
    model: Any = Settings
    steps = list(loc[:-1])
    while steps:
        step = steps.pop(0)
        info = getattr(model, "model_fields", {}).get(str(step))
        if info is None:
            return None
        ann = info.annotation
        if ann is not None and getattr(ann, "__origin__", None) is dict:
            ann = ann.__args__[1]
            if steps:
                steps.pop(0)  # the dict key (a connection name)
        model = ann
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _fix_for(err: dict[str, Any], key: str) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        model = _model_at(tuple(err["loc"]))
        known = list(getattr(model, "model_fields", {})) if model else []
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        return f"remove it or correct the spelling (did you mean {close[0]!r}?)" if close else "remove it"
    if "placeholder" in err.get("msg", ""):
        return f"replace the placeholder with the real value (in the file, or {env_name(key)})"
    return f"correct {key} (in the file, or {env_name(key)})"


def _connector_problems(name: str, raw: Any) -> list[tuple[str, str]]:
    """Every error of one connection's connector description: (key, message), not just the first."""
    if not isinstance(raw, dict):
        return []
    crm = raw.get("crm", "generic")
    overrides = dict(raw.get("connector") or {}) if isinstance(raw.get("connector"), dict) else {}
    if raw.get("base_url"):
        overrides["base_url"] = raw["base_url"]
    base = f"connections.{name}"
    try:
        build_connector(str(crm), overrides,
                        raw.get("fields") if isinstance(raw.get("fields"), dict) else None)
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            loc = tuple(err["loc"])
            if loc and loc[0] == "fields" and msg.startswith("fields."):
                source, _, rest = msg.partition(": ")
                out.append((f"{base}.{source}", rest))
            elif loc and loc[0] == "base_url":
                out.append((f"{base}.base_url", msg))
            else:
                out.append((f"{base}.connector.{_loc_key(loc)}", msg))
        return out
    except ValueError as exc:
        return [(f"{base}.crm", str(exc))]
    return _template_problems(name, raw)


def _template_problems(name: str, raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Every request template of a connection that could not be rendered (the model reports the
    first), each under its connector key: ``connections.NAME.connector.fetch``."""
    fields = {k: raw[k] for k in ("crm", "base_url", "connector", "fields") if k in raw}
    secrets = raw.get("secrets") if isinstance(raw.get("secrets"), dict) else {}
    try:
        conn = ConnectionSettings.model_construct(**fields, secrets=secrets)
        problems = conn.template_problems(conn.spec())
    except (ValueError, ValidationError, TypeError, AttributeError):
        return []
    out = []
    for problem in problems:
        where, _, message = problem.partition(": ")
        out.append((f"connections.{name}.{where}", message))
    return out


def _expand(err: dict[str, Any], raw: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """One pydantic error as (key, message, error) items. A connection's model-level error names
    its key here; its connector's errors are all listed by ``_connector_problems`` instead."""
    loc = tuple(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    if len(loc) == 2 and loc[0] == "connections" and err.get("type") == "value_error":
        name = str(loc[1])
        if "reassign_to" in msg:
            return [(f"connections.{name}.reassign_to", msg, err)]
        if _connector_problems(name, (raw.get("connections") or {}).get(name)):
            return []
        where, _, rest = msg.partition(": ")
        if where.startswith("connector.") and rest:
            return [(f"connections.{name}.{where}", rest, err)]
    if not loc and "default_connection" in msg:
        return [("server.default_connection", msg, err)]
    return [(_loc_key(loc) or "config", msg, err)]


def placeholder_keys(data: Any, prefix: str = "") -> list[str]:
    """Every key whose value is a placeholder such as ``change-me`` (all of them, in one pass)."""
    found: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            found += placeholder_keys(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += placeholder_keys(v, f"{prefix}.{i}")
    elif isinstance(data, str) and data.strip() and data.strip().lower() in PLACEHOLDERS:
        found.append(prefix)
    return found


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _deep_merge(out[k], v) if both else copy.deepcopy(v)
    return out


def _drop(data: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Remove the value at ``loc`` (the nearest dict key on the way); True when something went."""
    node: Any = data
    for i, step in enumerate(loc):
        if not isinstance(node, dict) or str(step) not in node:
            return False
        if i == len(loc) - 1 or not isinstance(node[str(step)], dict):
            del node[str(step)]
            return True
        node = node[str(step)]
    return False


def _salvage(merged: dict[str, Any]) -> Settings | None:
    data = copy.deepcopy(merged)
    for _ in range(_SALVAGE_ROUNDS):
        try:
            return Settings(_env_prefix=_NO_ENV, **data)
        except ValidationError as exc:
            dropped = False
            for err in exc.errors():
                loc = tuple(err["loc"])
                if not loc:
                    dropped |= _drop(data, ("server", "default_connection"))
                else:
                    dropped |= _drop(data, loc)
            if not dropped:
                return None
    return None


def read_file(path: str | Path | None) -> tuple[dict[str, Any], ConfigProblem | None]:
    """The TOML file's data, or a problem saying why it cannot be read."""
    if path is None:
        return {}, None
    p = Path(path)
    try:
        return tomllib.loads(p.read_text()), None
    except FileNotFoundError:
        return {}, ConfigProblem("config", f"config file not found: {p}", str(p),
                                 "pass the right --config path")
    except PermissionError:
        return {}, ConfigProblem("config", f"config file not readable by this user: {p}", str(p),
                                 "run as the service user or fix the file's permissions")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return {}, ConfigProblem("config", f"invalid TOML: {exc}", str(p),
                                 "fix the syntax at the position given")


def collect(path: str | Path | None, with_lint: bool = True) -> ConfigReport:
    """Validate the configuration (the file and ``os.environ``) and report every problem with its
    source (see the module's docstring); ``with_lint`` adds the checks of ``bridge.config_lint``."""
    environ = os.environ
    file_data, unreadable = read_file(path)
    report = ConfigReport(config_path=Path(path) if path is not None else None)
    if unreadable is not None:
        report.problems.append(unreadable)
        return report
    sources = Sources(report.config_path, file_data, environ)
    seen: set[tuple[str, str]] = set()

    def add(key: str, message: str, fix: str, severity: str = "problem") -> None:
        if (key, message) not in seen:
            seen.add((key, message))
            report.problems.append(ConfigProblem(key, message, sources.of(key), fix, severity))

    env_data = EnvSettingsSource(Settings)()
    try:
        credentials = CredentialsSource(Settings)()
    except ConfigError as exc:
        report.problems.append(ConfigProblem(exc.key, exc.problem, "$CREDENTIALS_DIRECTORY",
                                             "check the unit's LoadCredential= lines"))
        return report
    merged = _deep_merge(_deep_merge(file_data, credentials), env_data)
    placeholders = placeholder_keys(merged)
    for key in placeholders:
        add(key, "is a placeholder; set a real value",
            f"replace the placeholder with the real value (in the file, or {env_name(key)})")
    short = _short_keys(merged, placeholders)
    for key in short:
        add(key, "access keys must be at least 8 characters",
            "use a long random key (e.g. openssl rand -hex 24)")
    try:
        report.settings = Settings(**file_data)
    except ValidationError as exc:
        errors = exc.errors()
    else:
        if with_lint:
            _add_lints(report.settings, add)
        return report
    for err in errors:
        for key, msg, e in _expand(err, merged):
            if "placeholder" in msg and any(p == key or p.startswith(key + ".") for p in placeholders):
                continue  # already reported, with the exact key
            if short and key == "server.access_keys":
                continue
            add(key, msg, _fix_for(e, key))
    connections = merged.get("connections")
    for name, raw in (connections.items() if isinstance(connections, dict) else ()):
        for key, msg in _connector_problems(str(name), raw):
            add(key, msg, f"correct {key} (in the file, or {env_name(key)})")
    _default_connection(merged, add)
    report.settings = _salvage(merged)
    report.salvaged = True
    if report.settings is not None and with_lint:
        _add_lints(report.settings, add, skip=report.keys())
    return report


def _short_keys(merged: dict[str, Any], placeholders: list[str]) -> list[str]:
    keys = (merged.get("server") or {}).get("access_keys")
    if not isinstance(keys, list):
        return []
    return [f"server.access_keys.{i}" for i, k in enumerate(keys)
            if isinstance(k, str) and len(k) < 8 and f"server.access_keys.{i}" not in placeholders]


def _add_lints(settings: Settings, add: Any, skip: set[str] = frozenset()) -> None:
    """The semantic checks of ``bridge.config_lint``; on salvaged settings, not for keys that were
    already reported (their value was replaced by the default, which says nothing)."""
    def scope(key: str) -> str:  # a connection is judged as a whole: its values hang together
        parts = key.split(".")
        return ".".join(parts[:2]) if parts[0] == "connections" and len(parts) > 1 else key

    for item in lint(settings):
        near = any(item.key == k or item.key.startswith(k + ".") or k.startswith(item.key + ".")
                   for k in skip)
        if not near and not any(scope(k) == scope(item.key) != item.key.split(".")[0] for k in skip):
            add(item.key, item.message, item.fix, item.severity)


def _default_connection(merged: dict[str, Any], add: Any) -> None:
    default = (merged.get("server") or {}).get("default_connection")
    names = merged.get("connections") or {}
    if default is not None and isinstance(names, dict) and default not in names:
        add("server.default_connection", f"{default!r} is not a configured connection",
            f"use one of: {', '.join(names) or '(no connection configured)'}")
