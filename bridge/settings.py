"""The one settings object: built once at start-up from a TOML file and ``WPSB_*`` environment
variables (nested with ``__``, e.g. ``WPSB_WORDPRESS__APPLICATION_PASSWORD``), then passed down.

Validation errors name the key (``ConfigError.key``); placeholder secrets such as ``change-me``
are refused, so an example file copied unchanged does not start a bridge that accepts anything.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.core.connector import ConnectorSpec, build_connector
from bridge.errors import ConfigError

PLACEHOLDERS = {"change-me", "changeme", "change_me", "xxx", "xxxx", "secret", "your-key-here", ""}


def _refuse_placeholder(value: SecretStr | None, what: str) -> None:
    if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDERS:
        raise ValueError(f"{what} is a placeholder; set a real value")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    access_keys: list[SecretStr] = Field(default_factory=list)
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    dedupe_window_s: int = Field(24 * 3600, ge=0)
    default_connection: str | None = None
    # Failed-key throttling per client address; the table holds at most this many addresses.
    auth_failures_per_min: int = Field(20, gt=0)
    auth_tracker_size: int = Field(10_000, gt=0)
    # Proxies (e.g. the TLS terminator) whose X-Forwarded-For names the real client.
    trusted_proxies: list[str] = Field(default_factory=list)
    signature_tolerance_s: int = Field(300, gt=0)
    samples_per_connection: int = Field(5, ge=0)
    # The address CRMs reach the bridge at (behind the TLS proxy), for `webhooks register`.
    public_url: str | None = None

    @field_validator("access_keys")
    @classmethod
    def _keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            _refuse_placeholder(key, "access key")
            if len(key.get_secret_value()) < 8:
                raise ValueError("access keys must be at least 8 characters")
        return value


class DatabaseSettings(_Section):
    path: Path = Path("/var/lib/wp-sync-bridge/bridge.db")


class WorkerSettings(_Section):
    concurrency: int = Field(4, ge=1, le=256)
    max_attempts: int = Field(10, ge=1)
    lease_s: float = Field(120, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)
    retry_base_s: float = Field(5, gt=0)
    retry_max_s: float = Field(6 * 3600, gt=0)
    done_retention_s: float = Field(7 * 24 * 3600, ge=0)
    shutdown_grace_s: float = Field(20, ge=0)
    # tenacity, within one job run: a few quick attempts before handing back to the queue.
    http_attempts: int = Field(3, ge=1, le=10)
    http_backoff_s: float = Field(0.5, ge=0)
    http_max_wait_s: float = Field(10, ge=0)


class WordPressSettings(_Section):
    url: str = "http://127.0.0.1:8790"
    username: str = "admin"
    application_password: SecretStr = SecretStr("")
    transport: Literal["rest", "xmlrpc"] = "rest"
    timeout_s: float = Field(15, gt=0)
    max_connections: int = Field(8, ge=1)
    default_role: str = "subscriber"
    allowed_roles: list[str] | None = None
    username_format: Literal["email", "flname", "fnamenum"] = "email"
    password_length: int = Field(16, ge=8, le=128)
    # WordPress's own "email changed" notice to the old address when the CRM changes an email.
    email_change_notice: bool = True

    @field_validator("application_password")
    @classmethod
    def _app_password(cls, value: SecretStr) -> SecretStr:
        _refuse_placeholder(value, "application_password")
        return value

    @field_validator("allowed_roles")
    @classmethod
    def _no_admin(cls, value: list[str] | None) -> list[str] | None:
        if value and "administrator" in value:
            raise ValueError("administrator can never be granted by the bridge; remove it")
        return value


class ConnectionSettings(_Section):
    """One CRM connection: a preset (or ``generic``) plus overrides, secrets and policies."""

    crm: str = "generic"
    base_url: str | None = None
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    # Any part of the connector description, merged over the preset.
    connector: dict[str, Any] = Field(default_factory=dict)
    # Extra or overriding field mappings: CRM path → WordPress field.
    fields: dict[str, str] = Field(default_factory=dict)
    return_password_field: str | None = None
    # Also write back e.g. {"user_login" = "wp_login", "user_id" = "wp_user_id"}.
    return_fields: dict[Literal["user_login", "user_id"], str] = Field(default_factory=dict)
    signing_secrets: list[SecretStr] = Field(default_factory=list)
    create_on_update: bool = False
    delete_policy: Literal["ignore", "remove_roles", "delete"] = "ignore"
    reassign_to: int | None = None
    fetch_contact: bool = True

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            _refuse_placeholder(secret, f"secret {name!r}")
        return value

    @model_validator(mode="after")
    def _policy(self) -> "ConnectionSettings":
        if self.delete_policy == "delete" and self.reassign_to is None:
            raise ValueError("delete_policy = 'delete' needs reassign_to (the user ID that receives the content)")
        try:
            self.spec()
        except (ValueError, ValidationError) as exc:
            raise ValueError(_first_error(exc)) from None
        return self

    def spec(self) -> ConnectorSpec:
        """The connector description of this connection (preset + overrides)."""
        overrides = dict(self.connector)
        if self.base_url:
            overrides["base_url"] = self.base_url
        return build_connector(self.crm, overrides, self.fields)

    def secret_values(self) -> dict[str, str]:
        """The connection's secrets as plain text, for request templates only."""
        return {k: v.get_secret_value() for k, v in self.secrets.items()}


class Settings(BaseSettings):
    """Everything the bridge is configured with."""

    model_config = SettingsConfigDict(env_prefix="WPSB_", env_nested_delimiter="__", extra="forbid")

    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    wordpress: WordPressSettings = Field(default_factory=WordPressSettings)
    connections: dict[str, ConnectionSettings] = Field(default_factory=dict)
    log_level: str = "info"
    log_format: Literal["json", "console"] = "json"

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (secrets are usually given there).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _connections(self) -> "Settings":
        default = self.server.default_connection
        if default is not None and default not in self.connections:
            raise ValueError(f"server.default_connection {default!r} is not a configured connection")
        return self

    def default_connection(self) -> str | None:
        """The connection used on ``/`` when the request names none."""
        if self.server.default_connection:
            return self.server.default_connection
        return next(iter(self.connections), None)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg
    return str(exc)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError naming the bad key."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(str(p), "config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(p), f"invalid TOML: {exc}") from None
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(key, err["msg"].removeprefix("Value error, ")) from None
