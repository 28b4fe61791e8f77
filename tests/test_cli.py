"""The operator's command line: exit codes, jobs, rejected replay, field discovery."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
KEY = "cli-access-key-1"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def write_config(tmp_path: Path, database_url: str | None = None) -> Path:
    path = tmp_path / "bridge.toml"
    database = f'url = "{database_url}"' if database_url else f'path = "{tmp_path / "bridge.db"}"'
    path.write_text(f"""
[server]
port = 0
access_keys = ["{KEY}"]
[database]
{database}
[wordpress]
url = "http://127.0.0.1:9"
application_password = "abcd efgh ijkl mnop"
[connections.usercom]
crm = "usercom"
base_url = "http://127.0.0.1:9/usercom/api/public"
secrets = {{ token = "uc-secret-token" }}
""")
    return path


@pytest.fixture
def config(tmp_path) -> Path:
    return write_config(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_config(request, tmp_path) -> Path:
    """The configuration on each store."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return write_config(tmp_path, url)


def test_placeholder_config_exits_78_naming_the_key():
    """serve with the example file unchanged: exit 78 (configuration) and the key in the message."""
    result = cli("serve", "--config", str(ROOT / "config.example.toml"))
    assert result.returncode == 78
    assert "server.access_keys" in result.stderr and "placeholder" in result.stderr


def test_missing_config_file_exits_78(tmp_path):
    """A config path that does not exist is a configuration error, not a traceback."""
    result = cli("check", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 78 and "config file not found" in result.stdout
    served = cli("serve", "--config", str(tmp_path / "nope.toml"))
    assert served.returncode == 66 and "not found" in served.stderr


def test_check_reports_unreachable_wordpress_with_69(config):
    """check (doctor's old name) exits 69 when WordPress cannot be reached, and says where."""
    result = cli("check", "--config", str(config))
    assert result.returncode == 69, result.stdout
    assert "wordpress" in result.stdout and "127.0.0.1:9" in result.stdout and "problem" in result.stdout


async def test_discover_shows_fields_masked_and_a_mapping(any_config):
    """discover prints what the CRM really sent (passwords masked) and a mapping block to paste."""
    config = any_config
    bridge = Bridge(load_settings(config))
    await bridge.start()
    try:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            body = {"user": {"id": 42, "email": "d@u.com", "first_name": "Dee", "company": "Acme", "user_pass": "Sekr1t-pw"}}
            async with s.post(f"http://127.0.0.1:{bridge.port}/hooks/usercom", params={"access_key": KEY}, json=body) as r:
                assert r.status == 202
            async with s.post(f"http://127.0.0.1:{bridge.port}/hooks/usercom", params={"access_key": KEY},
                              data=b"{broken", headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400
    finally:
        await bridge.stop()
    result = cli("discover", "usercom", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "user.company" in result.stdout and '"Acme"' in result.stdout
    assert "Sekr1t-pw" not in result.stdout and '"***"' in result.stdout
    assert "[connections.usercom.fields]" in result.stdout and '"company" = "meta.company"' in result.stdout

    jobs = cli("jobs", "list", "--config", str(config))
    assert jobs.returncode == 0 and "usercom" in jobs.stdout and "add" in jobs.stdout
    rejected = cli("rejected", "list", "--config", str(config))
    assert "invalid_json" in rejected.stdout
    replay = cli("rejected", "replay", "1", "--config", str(config))
    assert replay.returncode == 1 and "still refused: invalid_json" in replay.stdout


def test_discover_without_samples_says_what_to_do(config, tmp_path):
    """No database yet: exit 66 naming database.path (none is created); no deliveries yet: a hint and exit 1."""
    from bridge.store.db import connect, migrate

    missing = cli("discover", "usercom", "--config", str(config))
    assert missing.returncode == 66 and "database.path" in missing.stderr
    assert not (tmp_path / "bridge.db").exists()
    conn = connect(tmp_path / "bridge.db")
    migrate(conn)
    conn.close()
    result = cli("discover", "usercom", "--config", str(config))
    assert result.returncode == 1 and "send a test event" in result.stderr
