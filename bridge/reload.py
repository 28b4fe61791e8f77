"""What a SIGHUP can change in a running bridge: the access keys (global and per connection), the
log level and the secrets used to reach WordPress and the CRMs. Everything else (addresses, the
database, workers, connections, mappings) needs a restart; a reload names those keys instead of
half-applying them.

Pure: ``apply_reloadable`` copies the reloadable values of a freshly loaded ``Settings`` into the
running one (the object every part of the bridge holds) and reports what it did; the caller then
rebuilds the clients that keep a secret of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from bridge.settings import Settings


@dataclass
class Reloaded:
    """Keys whose new value was applied, and keys that changed but only take effect on a restart."""

    applied: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)

    @property
    def wordpress_changed(self) -> bool:
        return any(key.startswith("wordpress.") for key in self.applied)

    def connections_changed(self) -> set[str]:
        """Names of the connections whose CRM secrets changed (their clients are rebuilt)."""
        return {key.split(".")[1] for key in self.applied
                if key.startswith("connections.") and key.endswith(".secrets")}


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _copy(running: Any, new: Any, attr: str, key: str, out: Reloaded) -> None:
    if _plain(getattr(running, attr)) != _plain(getattr(new, attr)):
        setattr(running, attr, getattr(new, attr))
        out.applied.append(key)


def _differences(old: Any, new: Any, prefix: str = "", depth: int = 2) -> list[str]:
    """Dotted keys (at most ``depth`` levels deep) where two JSON-like values differ."""
    if old == new:
        return []
    if depth == 0 or not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix or "config"]
    keys = sorted(set(old) | set(new), key=str)
    paths = {k: f"{prefix}.{k}" if prefix else str(k) for k in keys}
    return [d for k in keys for d in _differences(old.get(k), new.get(k), paths[k], depth - 1)]


def apply_reloadable(running: Settings, new: Settings) -> Reloaded:
    """Copy the reloadable values of ``new`` into ``running``; list what else differs."""
    out = Reloaded()
    _copy(running.server, new.server, "access_keys", "server.access_keys", out)
    _copy(running, new, "log_level", "log_level", out)
    _copy(running.wordpress, new.wordpress, "username", "wordpress.username", out)
    _copy(running.wordpress, new.wordpress, "application_password", "wordpress.application_password", out)
    for name, conn in running.connections.items():
        if name in new.connections:
            other = new.connections[name]
            _copy(conn, other, "access_keys", f"connections.{name}.access_keys", out)
            _copy(conn, other, "secrets", f"connections.{name}.secrets", out)
            _copy(conn, other, "signing_secrets", f"connections.{name}.signing_secrets", out)
    out.needs_restart = _differences(_plain(running.model_dump()), _plain(new.model_dump()))
    return out
