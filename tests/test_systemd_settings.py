"""Settings from systemd credentials ($CREDENTIALS_DIRECTORY), what a reload may change, and the
journal priority prefix of each log line."""

from __future__ import annotations

import io
import json

import pytest

from bridge.errors import ConfigError
from bridge.logs import configure
from bridge.reload import apply_reloadable
from bridge.settings import credential_key, load_settings

FILE = {
    "server": {"access_keys": ["file-access-key-1"], "port": 8080},
    "wordpress": {"url": "http://wp.example", "application_password": "file-app-password"},
    "connections": {"customerly": {"crm": "customerly", "secrets": {"token": "file-token-1"}}},
}


@pytest.fixture
def creds(tmp_path, monkeypatch):
    directory = tmp_path / "credentials"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_credentials_override_the_file_and_merge_with_it(creds):
    """Dotted and WPSB_ names both work; a credential replaces only its own key, the file keeps the rest."""
    (creds / "wordpress.application_password").write_text("cred-app-password\n")
    (creds / "connections.customerly.secrets.token").write_text("cred-token-1")
    (creds / "WPSB_SERVER__ACCESS_KEYS").write_text("cred-key-one-1\ncred-key-two-2\n")
    s = load_settings(None, **FILE)
    assert s.wordpress.application_password.get_secret_value() == "cred-app-password"
    assert s.wordpress.url == "http://wp.example"
    assert s.connections["customerly"].secret_values() == {"token": "cred-token-1"}
    assert s.connections["customerly"].crm == "customerly"
    assert [k.get_secret_value() for k in s.server.access_keys] == ["cred-key-one-1", "cred-key-two-2"]
    assert s.server.port == 8080


def test_environment_overrides_credentials(creds, monkeypatch):
    """Precedence: environment, then credentials, then the file."""
    (creds / "wordpress.application_password").write_text("cred-app-password")
    monkeypatch.setenv("WPSB_WORDPRESS__APPLICATION_PASSWORD", "env-app-password")
    assert load_settings(None, **FILE).wordpress.application_password.get_secret_value() == "env-app-password"


def test_json_credential_and_bad_credentials_name_their_key(creds):
    """A JSON list is read as JSON; a placeholder or an unknown name is refused with the key."""
    (creds / "server.access_keys").write_text('["json-key-one-1"]')
    assert [k.get_secret_value() for k in load_settings(None, **FILE).server.access_keys] == ["json-key-one-1"]
    (creds / "wordpress.application_password").write_text("change-me\n")
    with pytest.raises(ConfigError) as err:
        load_settings(None, **FILE)
    assert err.value.key == "wordpress.application_password" and "placeholder" in err.value.problem
    (creds / "wordpress.application_password").unlink()
    (creds / "wordpress.aplication_password").write_text("typo-in-the-name")
    with pytest.raises(ConfigError) as err:
        load_settings(None, **FILE)
    assert err.value.key == "wordpress.aplication_password"


def test_credential_names():
    """Both spellings name the same setting."""
    assert credential_key("WPSB_CONNECTIONS__ROWND__SECRETS__APP_KEY") == ["connections", "rownd", "secrets", "app_key"]
    assert credential_key("connections.rownd.secrets.app_key") == ["connections", "rownd", "secrets", "app_key"]


def test_reload_applies_secrets_and_names_what_needs_a_restart():
    """Keys (global and scoped), log level, WordPress and CRM secrets are copied into the running settings; a changed
    port or worker count is only named."""
    running = load_settings(None, **FILE)
    new_data = json.loads(json.dumps(FILE))
    new_data["server"]["access_keys"] = ["new-access-key-1"]
    new_data["server"]["port"] = 9090
    new_data["wordpress"]["application_password"] = "new-app-password"
    new_data["connections"]["customerly"]["secrets"] = {"token": "new-token-1"}
    new_data["connections"]["customerly"]["access_keys"] = ["scoped-access-key-1"]
    new = load_settings(None, log_level="debug", worker={"concurrency": 9}, **new_data)
    changes = apply_reloadable(running, new)
    assert changes.applied == ["server.access_keys", "log_level", "wordpress.application_password",
                               "connections.customerly.access_keys", "connections.customerly.secrets"]
    assert changes.needs_restart == ["server.port", "worker.concurrency"]
    assert changes.wordpress_changed and changes.connections_changed() == {"customerly"}
    assert [k.get_secret_value() for k in running.server.access_keys] == ["new-access-key-1"]
    assert running.connections["customerly"].secret_values() == {"token": "new-token-1"}
    assert running.server.port == 8080 and running.log_level == "debug"
    assert apply_reloadable(running, new).applied == []


def test_journal_prefix_maps_each_level():
    """error <3>, warning <4>, info <6>, debug <7>; the JSON follows unchanged."""
    import structlog

    out = io.StringIO()
    configure("debug", "json", stream=out, journal=True)
    log = structlog.get_logger("t")
    log.error("job.dead", job_id=1)
    log.warning("w")
    log.info("i")
    log.debug("d")
    configure("info", "console")
    lines = out.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>", "<7>"]
    assert json.loads(lines[0][3:])["event"] == "job.dead"
