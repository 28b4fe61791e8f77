"""The one settings object: built once at start-up from a TOML file and ``WPSB_*`` environment
variables (nested with ``__``, e.g. ``WPSB_WORDPRESS__APPLICATION_PASSWORD``), then passed down.

Under systemd, secrets can also come from credentials (``LoadCredential=``): each file in
``$CREDENTIALS_DIRECTORY`` is one setting, named by its dotted key (``wordpress.application_password``,
``connections.customerly.secrets.token``) or by its environment name
(``WPSB_WORDPRESS__APPLICATION_PASSWORD``). Precedence: environment, then credentials, then the file.

Validation errors name the key (``ConfigError.key``); placeholder secrets such as ``change-me``
are refused, so an example file copied unchanged does not start a bridge that accepts anything.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, ValidationError,
                      field_validator,
                      model_validator)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.core.connector import ConnectorSpec, build_connector
from bridge.core.templates import template_problems
from bridge.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Query parameters that can name the contact or its role instead of the body (WP Fusion's URL).
OVERRIDES = ("email", "contact_id", "role")
# The merge fields each connector request is filled with (bridge.clients.crm, bridge.webhooks).
REQUEST_FIELDS = {
    "fetch": {"contact_id", "email"},
    "write_back": {"contact_id", "email", "attributes"},
    "webhook_create": {"webhook_url", "connection"},
    "webhook_list": {"webhook_url"},
    "webhook_delete": {"webhook_id"},
    "probe": set(),  # doctor's and wpsb_crm_up's harmless read: secrets only
}
PLACEHOLDERS = {"change-me", "changeme", "change_me", "xxx", "xxxx", "secret", "your-key-here", ""}


def _refuse_placeholder(value: SecretStr | None, what: str) -> None:
    if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDERS:
        raise ValueError(f"{what} is a placeholder; set a real value")


def _http_url(value: str | None, what: str) -> str | None:
    """Refuse a URL that is not absolute http(s) with a host: it would fail on every request."""
    if value is None:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {value[:80]!r} is not an http:// or https:// URL with a host")
    return value


def _check_keys(value: list[SecretStr]) -> list[SecretStr]:
    for key in value:
        _refuse_placeholder(key, "access key")
        if len(key.get_secret_value()) < 8:
            raise ValueError("access keys must be at least 8 characters")
    return value


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
    # /metrics on an address of its own (e.g. for a scraper on a private network) and/or behind a
    # bearer token; unset: /metrics on the webhook listener, open (bind it to 127.0.0.1).
    metrics_host: str | None = None
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_token: SecretStr | None = None
    # Against floods (no key is needed to open a connection): a request's line and headers must
    # arrive within headers_timeout_s of the connection (or of its first byte after a keep-alive
    # pause), its body within body_timeout_s; an idle keep-alive connection is closed after
    # keepalive_timeout_s; at max_connections the oldest connection still waiting for its request
    # is closed to make room (a new one is refused only when every connection is busy).
    headers_timeout_s: float = Field(10, gt=0, description=(
        "Seconds for a request line and headers to arrive (from the connection, or from a request's "
        "first byte after a keep-alive pause); a slower connection is closed."))
    body_timeout_s: float = Field(30, gt=0, description=(
        "Seconds for a delivery's body to arrive once its headers have; a slower one is answered "
        "408 body_timeout."))
    keepalive_timeout_s: float = Field(15, gt=0, description=(
        "Seconds an idle keep-alive connection is kept open."))
    max_connections: int = Field(512, ge=1, description=(
        "Connections served at once; at the cap the oldest one still waiting for its request is closed "
        "to make room, and a new one is refused only when all are busy in a request (warned once a minute)."))
    # The listen backlog is also how many connections one accept round can take at once, before the
    # cap sees them: max_connections + 2 x backlog must stay below the descriptor limit (1,024 by
    # default under systemd), or accept() fails with EMFILE and intake pauses.
    backlog: int = Field(128, ge=1, le=65535, description=(
        "The listen backlog; keep max_connections + 2 x backlog + 64 under the descriptor limit "
        "(LimitNOFILE)."))

    @field_validator("access_keys")
    @classmethod
    def _keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        return _check_keys(value)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return _http_url(value, "public_url")


class DatabaseSettings(_Section):
    path: Path = Path("/var/lib/wp-sync-bridge/bridge.db")
    # postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME selects the PostgreSQL store (several bridges on
    # one queue); unset, the SQLite file at ``path`` (one bridge).
    url: SecretStr | None = None
    # PostgreSQL only: a commit that made work due sends one NOTIFY, so the other bridges claim it at
    # once; false leaves them to find it at their next poll (worker.poll_interval_s).
    notify: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        from bridge.store.pgdb import is_url

        if value is not None and not is_url(value.get_secret_value()):
            raise ValueError("must be a postgresql:// URL (postgresql://USER@HOST/DBNAME); for SQLite, set "
                             "database.path instead")
        return value

    @property
    def backend(self) -> str:
        """``postgresql`` when ``url`` is set, else ``sqlite``."""
        return "postgresql" if self.url is not None else "sqlite"

    @property
    def where(self) -> str:
        """The database as logs and commands name it (a URL's password masked)."""
        from bridge.store.pgdb import shown_url

        return shown_url(self.url.get_secret_value()) if self.url is not None else str(self.path)

    @field_validator("path")
    @classmethod
    def _path(cls, value: Path) -> Path:
        if value.is_dir():
            raise ValueError(f"{value} is a directory; name the database file inside it "
                             f"(e.g. {value / 'bridge.db'})")
        for parent in value.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ValueError(f"{value} is under {parent}, which is a file, not a directory")
                break
        return value


class WorkerSettings(_Section):
    concurrency: int = Field(4, ge=1, le=256)
    # A failing job is retried until it is this old (counted from its arrival or requeue): 3 days,
    # as Standard Webhooks senders keep trying. max_attempts, when set, also caps the runs.
    retry_budget_s: float = Field(3 * 24 * 3600, gt=0)
    max_attempts: int | None = Field(None, ge=1)
    lease_s: float = Field(120, gt=0)
    # A run's deadline (monotonic): past it the run is cancelled and the job retried.
    job_timeout_s: float = Field(300, gt=0)
    # The longest pause of a background loop (or a result write) after repeated errors.
    loop_backoff_max_s: float = Field(30, gt=0)
    # WordPress unreachable: dispatch pauses and probes it, 1 s doubling to this.
    outage_probe_max_s: float = Field(60, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)
    retry_base_s: float = Field(5, gt=0)
    retry_max_s: float = Field(6 * 3600, gt=0)
    done_retention_s: float = Field(7 * 24 * 3600, ge=0)
    # What untrusted senders can grow is bounded: dead jobs and rejected deliveries are pruned
    # after their retention, and beyond the cap the oldest go first.
    dead_retention_s: float = Field(30 * 24 * 3600, ge=0,
                                    description="Seconds a dead job is kept before it is pruned.")
    dead_max_jobs: int = Field(100_000, ge=0,
                               description="Dead jobs kept at most; beyond, the oldest are pruned first.")
    rejected_retention_s: float = Field(14 * 24 * 3600, ge=0, description=(
        "Seconds a rejected delivery is kept (for `rejected replay`) before it is pruned."))
    rejected_max_rows: int = Field(10_000, ge=0, description=(
        "Rejected deliveries kept at most; beyond, the oldest are pruned first."))
    shutdown_grace_s: float = Field(20, ge=0)
    # tenacity, within one job run: a few quick attempts before handing back to the queue.
    http_attempts: int = Field(3, ge=1, le=10)
    http_backoff_s: float = Field(0.5, ge=0)
    http_max_wait_s: float = Field(10, ge=0)
    # Upserts of running jobs sent together as one plugin batch request (bridge.batching): at most
    # batch_size per request (the plugin's own limit too: 100 from plugin 2.4, 50 before), and up
    # to concurrency requests in flight, so up to concurrency x batch_size jobs run at once. 1: one
    # upsert per request. 100: WordPress's bootstrap (~25 ms of CPU here) is paid per request, an
    # unchanged user in a batch costs ~0.6 ms more; WordPress spent 1.07-1.17 ms per unchanged user
    # in batches of 50, 0.70-0.90 in batches of 100 (README).
    batch_size: int = Field(100, ge=1, le=500)
    # How long an upsert waits for running jobs still on their way to theirs (never when alone).
    batch_linger_s: float = Field(0.01, ge=0, le=1)
    # While the intake keeps answering deliveries, a batch that is not full waits this long at most
    # to fill (never a lone upsert with nothing in flight, so idle latency is unchanged); WordPress
    # then spends its bootstrap on more users and leaves the cores to the intake (README). 0: off.
    batch_hold_s: float = Field(0.1, ge=0, le=1)
    # While a WordPress request of this bridge is in flight, the queue is claimed from at most this
    # often: jobs claimed meanwhile would wait for that answer in the batcher anyway (Nagle's rule,
    # bridge.batching), and each claim is a commit. With no request in flight, at once.
    claim_interval_s: float = Field(0.01, ge=0, le=1)


class WordPressSettings(_Section):
    url: str = "http://127.0.0.1:8790"
    username: str = "admin"
    application_password: SecretStr = SecretStr("")
    transport: Literal["rest", "xmlrpc"] = "rest"
    timeout_s: float = Field(15, gt=0)
    max_connections: int = Field(8, ge=1)
    default_role: str = "subscriber"
    # Roles a delivery or CRM record may ask for; unset: the default role alone (the operator
    # lists more). administrator is never granted.
    allowed_roles: list[str] | None = None
    username_format: Literal["email", "flname", "fnamenum"] = "email"
    password_length: int = Field(16, ge=8, le=128)
    # WordPress's own "email changed" notice to the old address when the CRM changes a user's email.
    email_change_notice: bool = True

    @field_validator("application_password")
    @classmethod
    def _app_password(cls, value: SecretStr) -> SecretStr:
        _refuse_placeholder(value, "application_password")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value, "url")

    @field_validator("default_role")
    @classmethod
    def _default_role(cls, value: str) -> str:
        if value.strip().lower() == "administrator":
            raise ValueError("administrator can never be granted by the bridge; "
                             "use a role such as subscriber")
        return value

    def granted_roles(self) -> list[str]:
        """The roles the bridge may set: ``allowed_roles``, else only ``default_role``."""
        return list(self.allowed_roles) if self.allowed_roles is not None else [self.default_role]

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
    # Keys that work for this connection only (server.access_keys work for every connection).
    access_keys: list[SecretStr] = Field(default_factory=list)
    # Networks the CRM sends from (client address as seen behind server.trusted_proxies); empty: any.
    allowed_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    # Query parameters allowed to name the contact or role instead of the body. Not on a
    # connection with signing_secrets: the signature covers the body, not the query string.
    query_overrides: list[Literal["email", "contact_id", "role"]] = Field(default_factory=lambda: ["role"])
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

    @field_validator("access_keys")
    @classmethod
    def _keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        return _check_keys(value)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return _http_url(value, "base_url")

    @model_validator(mode="after")
    def _policy(self) -> "ConnectionSettings":
        if self.delete_policy == "delete" and self.reassign_to is None:
            raise ValueError("delete_policy = 'delete' needs reassign_to "
                             "(the user ID that receives the content)")
        try:
            spec = self.spec()
        except (ValueError, ValidationError) as exc:
            raise ValueError(_first_error(exc)) from None
        problems = self.template_problems(spec)
        if problems:
            raise ValueError(problems[0])
        return self

    def template_problems(self, spec: ConnectorSpec) -> list[str]:
        """Every request template that could not be rendered, named by its connector key."""
        secrets = set(self.secrets)
        out = []
        for name, value in spec.headers.items():
            out += [f"connector.headers.{name}: {p}" for p in template_problems(value, set(), secrets)]
        for request_name, known in REQUEST_FIELDS.items():
            request = getattr(spec, request_name)
            if request is None:
                continue
            template = {"path": request.path, "query": request.query, "json_body": request.json_body}
            out += [f"connector.{request_name}: {p}" for p in template_problems(template, known, secrets)]
        if any(getattr(spec, r) is not None for r in REQUEST_FIELDS) and spec.base_url:
            try:
                _http_url(spec.base_url, "base_url")
            except ValueError as exc:
                out.append(f"connector.base_url: {exc}")
        return out

    def overrides_allowed(self) -> frozenset[str]:
        """The query overrides this connection takes (none on a signed connection)."""
        return frozenset() if self.signing_secrets else frozenset(self.query_overrides)

    def spec(self) -> ConnectorSpec:
        """The connector description of this connection (preset + overrides)."""
        overrides = dict(self.connector)
        if self.base_url:
            overrides["base_url"] = self.base_url
        return build_connector(self.crm, overrides, self.fields)

    def secret_values(self) -> dict[str, str]:
        """The connection's secrets as plain text, for request templates only."""
        return {k: v.get_secret_value() for k, v in self.secrets.items()}


LIST_KEYS = {"access_keys", "signing_secrets"}  # a credential of one of these holds one value per line


def credential_key(name: str) -> list[str]:
    """The settings path of a credential file name: ``wordpress.application_password`` or
    ``WPSB_WORDPRESS__APPLICATION_PASSWORD`` → ``["wordpress", "application_password"]``."""
    if name.upper().startswith("WPSB_"):
        return [part.lower() for part in name[5:].split("__")]
    return name.split(".")


def credential_value(key: list[str], text: str) -> Any:
    """A credential file's content as a setting: JSON when it is a list or object, one item per
    line for the list keys, else the text without its final newline."""
    text = text.rstrip("\r\n")
    if text.lstrip().startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    if key[-1] in LIST_KEYS:
        return [line.strip() for line in text.splitlines() if line.strip()]
    return text


class CredentialsSource(PydanticBaseSettingsSource):
    """Settings from systemd credentials: the files in ``$CREDENTIALS_DIRECTORY`` (systemd.exec(5),
    "Credentials"; https://systemd.io/CREDENTIALS/), one setting per file."""

    def __init__(self, settings_cls: type[BaseSettings], directory: str | None = None) -> None:
        super().__init__(settings_cls)
        self.directory = directory if directory is not None else os.environ.get("CREDENTIALS_DIRECTORY")

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is read in __call__

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not self.directory:
            return out
        root = Path(self.directory)
        try:
            files = sorted(p for p in root.iterdir() if p.is_file())
        except OSError as exc:
            raise ConfigError("$CREDENTIALS_DIRECTORY", f"cannot read {root}: {exc.strerror}") from None
        for path in files:
            key = credential_key(path.name)
            node = out
            for part in key[:-1]:
                node = node.setdefault(part, {})
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(".".join(key), f"cannot read credential {path}: {exc}") from None
            node[key[-1]] = credential_value(key, text)
        return out


class Settings(BaseSettings):
    """Everything the bridge is configured with."""

    model_config = SettingsConfigDict(env_prefix="WPSB_", env_nested_delimiter="__", extra="forbid")

    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    wordpress: WordPressSettings = Field(default_factory=WordPressSettings)
    connections: dict[str, ConnectionSettings] = Field(default_factory=dict)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides credentials, which override the file (secrets are given there).
        return (env_settings, CredentialsSource(settings_cls), init_settings)

    @model_validator(mode="after")
    def _connections(self) -> "Settings":
        default = self.server.default_connection
        if default is not None and default not in self.connections:
            raise ValueError(f"server.default_connection {default!r} is not a configured connection")
        return self

    def has_access_keys(self) -> bool:
        """Whether any key (global or per connection) can authenticate a delivery."""
        return bool(self.server.access_keys) or any(c.access_keys for c in self.connections.values())

    def secret_values(self) -> list[str]:
        """Every configured secret as plain text (access keys, the application password, CRM
        secrets, signing secrets): what the log redactor and the stored errors scrub."""
        values = [k.get_secret_value() for k in self.server.access_keys]
        values.append(self.wordpress.application_password.get_secret_value())
        if self.database.url is not None:
            from bridge.store.pgdb import url_password

            values.append(url_password(self.database.url.get_secret_value()) or "")
        if self.server.metrics_token is not None:
            values.append(self.server.metrics_token.get_secret_value())
        for conn in self.connections.values():
            values.extend(conn.secret_values().values())
            values.extend(k.get_secret_value() for k in conn.access_keys)
            values.extend(s.get_secret_value() for s in conn.signing_secrets)
        return [v for v in values if v]

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
