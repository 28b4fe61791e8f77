"""Settings validation (keys named, placeholders refused, environment overrides) and field discovery."""

from pathlib import Path

import pytest

from bridge.core.connector import build_connector
from bridge.core.discovery import discover, guess_target, mapping_block, mask, shape
from bridge.core.mapping import map_record, redacted_fields
from bridge.errors import ConfigError
from bridge.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_is_refused_until_its_placeholders_are_replaced():
    """config.example.toml parses, but its change-me secrets are refused, naming the key."""
    with pytest.raises(ConfigError) as info:
        load_settings(ROOT / "config.example.toml")
    assert info.value.key.startswith("server.access_keys") and "placeholder" in info.value.problem


def test_example_config_loads_with_real_secrets(monkeypatch):
    """With secrets from the environment the example file is a valid configuration."""
    monkeypatch.setenv("WPSB_SERVER__ACCESS_KEYS", '["a-real-key-123"]')
    monkeypatch.setenv("WPSB_WORDPRESS__APPLICATION_PASSWORD", "abcd efgh ijkl mnop")
    monkeypatch.setenv("WPSB_CONNECTIONS__CUSTOMERLY__SECRETS__TOKEN", "real-token-123")
    settings = load_settings(ROOT / "config.example.toml")
    assert settings.connections["customerly"].spec().fields["attributes.company"] == "meta.company"
    assert settings.wordpress.application_password.get_secret_value() == "abcd efgh ijkl mnop"


@pytest.mark.parametrize("connection,fragment", [
    ({"crm": "customerly", "fields": {"a.b": "shoe_size"}}, "unknown WordPress field"),
    ({"crm": "customerly", "fields": {"a[b": "first_name"}}, "invalid step"),
    ({"crm": "nosuchcrm"}, "unknown crm"),
    ({"crm": "rownd", "delete_policy": "delete"}, "reassign_to"),
    ({"crm": "generic", "connector": {"fetch": {"method": "GET"}}}, "path"),
])
def test_invalid_connections_name_the_key(connection, fragment):
    """A bad mapping or connector is refused at start-up, with the connection's key named."""
    with pytest.raises(ConfigError) as info:
        load_settings(None, connections={"mine": connection})
    assert info.value.key.startswith("connections.mine") and fragment in f"{info.value.key} {info.value.problem}"


def test_administrator_in_allowed_roles_is_refused():
    """The configuration cannot allow granting administrator."""
    with pytest.raises(ConfigError) as info:
        load_settings(None, wordpress={"allowed_roles": ["subscriber", "administrator"]})
    assert info.value.key == "wordpress.allowed_roles"


def test_mask_hides_secret_looking_fields():
    """Discovery samples never keep passwords or tokens."""
    masked = mask({"user": {"email": "a@x.io", "user_pass": "hunter2", "api_token": "t", "tags": [{"password": "p"}]}})
    assert masked == {"user": {"email": "a@x.io", "user_pass": "***", "api_token": "***", "tags": [{"password": "***"}]}}


def test_discover_lists_paths_and_builds_a_mapping_block():
    """Every field path appears with a sample value, and the block maps the record's fields."""
    samples = [{"user": {"id": 7, "email": "n@u.com", "first_name": "N", "company": "Acme", "tags": ["a"]}}]
    fields = dict(discover(samples))
    assert fields["user.email"] == "n@u.com" and fields["user.tags.0"] == "a"
    block = mapping_block("usercom", list(fields.items()), "user")
    assert '"email" = "user_email"' in block and '"first_name" = "first_name"' in block
    assert '"company" = "meta.company"' in block and "tags.0" not in block
    assert guess_target("data.last_name") == "last_name"


def test_shape_ignores_values_and_list_lengths():
    """Two deliveries of the same kind share a shape; a new field makes a new one."""
    assert shape({"a": 1, "t": [1, 2]}) == shape({"a": 2, "t": [3]})
    assert shape({"a": 1}) != shape({"a": 1, "b": 2})


def test_rownd_redacted_fields_are_not_mapped():
    """Fields listed in `redacted` or holding <<REDACTED>> are skipped."""
    spec = build_connector("rownd")
    body = {"data": {"email": "j@acme.com", "first_name": "<<REDACTED>>", "last_name": "Rose"}, "redacted": ["last_name"]}
    fields = map_record(spec, body["data"], redacted_fields(spec, body))
    assert fields.user_email == "j@acme.com" and fields.first_name is None and fields.last_name is None
    assert sorted(fields.redacted) == ["first_name", "last_name"]


def test_usercom_mapping_reads_attribute_lists_and_tag_objects():
    """User.com attributes [{name_std, value}] and tags [{name}] map by path."""
    spec = build_connector("usercom", extra_fields={"attributes[name_std=city].value": "meta.city"})
    user = {"email": "u@x.io", "first_name": "U", "tags": [{"id": 1, "name": "b"}, {"id": 2, "name": "a"}],
            "attributes": [{"name_std": "city", "value": "Oslo"}, {"name_std": "user_login", "value": "ulogin"}]}
    fields = map_record(spec, user)
    assert (fields.user_login, fields.meta, fields.tags) == ("ulogin", {"city": "Oslo"}, ["a", "b"])


def test_database_url_selects_postgresql_and_its_password_is_a_secret():
    """A postgresql:// URL selects the PostgreSQL store, its password joins the secrets the logs
    scrub and is masked where the database is named; any other URL is refused naming the key."""
    settings = load_settings(None, database={"url": "postgresql://wpsb:Pw-in-url-77@db.internal:5433/wpsb"})
    assert settings.database.backend == "postgresql"
    assert "Pw-in-url-77" in settings.secret_values()
    assert settings.database.where == "postgresql://wpsb:***@db.internal:5433/wpsb"
    assert load_settings(None).database.backend == "sqlite"
    with pytest.raises(ConfigError) as info:
        load_settings(None, database={"url": "mysql://u:p@h/db"})
    assert info.value.key == "database.url" and "postgresql://" in info.value.problem
