"""doctor's configuration checks: a configuration broken in many ways, each problem reported with
its key and the source of the bad value (file and key, or the WPSB_ variable), all in one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config_report import collect
from bridge.doctor import config_findings

ROOT = Path(__file__).resolve().parent.parent

BASE = """
[server]
port = 8080
access_keys = ["a-good-access-key"]
[database]
path = "{db}"
[wordpress]
url = "https://wp.example.com"
application_password = "abcd efgh ijkl mnop"
[connections.cly]
crm = "customerly"
secrets = {{ token = "real-token-123" }}
"""

# (what is appended to or changed in the file, environment, the key that must be reported, a fragment)
BREAKAGES = [
    ("[server]\nport = 'eighty'", {}, "server.port", "integer"),
    ("[server]\nprot = 8080", {}, "server.prot", "did you mean 'port'"),
    ("[server]\naccess_keys = ['change-me']", {}, "server.access_keys.0", "placeholder"),
    ("[server]\naccess_keys = ['a-good-access-key', 'short']", {}, "server.access_keys.1", "at least 8"),
    ("[server]\naccess_keys = []", {}, "server.access_keys", "refuses to start"),
    ("[server]\ndefault_connection = 'nope'", {}, "server.default_connection", "not a configured connection"),
    ("[server]\npublic_url = 'bridge.example.com'", {}, "server.public_url", "https://"),
    ("[database]\npth = '/tmp/x.db'", {}, "database.pth", "unknown key"),
    ("[wordpress]\napplication_password = 'change-me'", {}, "wordpress.application_password", "placeholder"),
    ("[wordpress]\napplication_password = ''", {}, "wordpress.application_password", "set a real value"),
    ("[wordpress]\ntransport = 'soap'", {}, "wordpress.transport", "'rest' or 'xmlrpc'"),
    ("[wordpress]\nurl = 'example.com'", {}, "wordpress.url", "https://"),
    ("[wordpress]\ndefault_role = 'administrator'", {}, "wordpress.default_role", "never be granted"),
    ("[wordpress]\nallowed_roles = ['subscriber', 'administrator']", {}, "wordpress.allowed_roles", "administrator"),
    ("[wordpress]\ntimeout_s = -1", {}, "wordpress.timeout_s", "greater than 0"),
    ("log_level = 'verbose'", {}, "log_level", "'debug'"),
    ("log_format = 'xml'", {}, "log_format", "'json' or 'console'"),
    ("[worker]\nretry_base_s = -5", {}, "worker.retry_base_s", "greater than 0"),
    ("", {"WPSB_WORKER__CONCURRENCY": "0"}, "worker.concurrency", "greater than or equal to 1"),
    ("", {"WPSB_CONNECTIONS__CLY__SECRETS__TOKEN": "change-me"}, "connections.cly.secrets.token", "placeholder"),
    ("[connections.x]\ncrm = 'nosuchcrm'", {}, "connections.x.crm", "unknown crm"),
    ("[connections.f]\ncrm = 'customerly'\nsecrets = { token = 'real-token-1' }\nfields = { 'a.b' = 'shoe_size' }",
     {}, "connections.f.fields.a.b", "unknown WordPress field"),
    ("[connections.r]\ncrm = 'rownd'\ndelete_policy = 'delete'\n"
     "secrets = { app_key = 'k-12345', app_secret = 's-12345', app_id = 'app-1' }",
     {}, "connections.r.reassign_to", "reassign_to"),
    ("[connections.u]\ncrm = 'usercom'\nsecrets = { token = 'real-token-1' }", {}, "connections.u.base_url", "not set"),
    ("[connections.u]\ncrm = 'usercom'\nbase_url = 'app.user.com/api/public'\nsecrets = { token = 'real-token-1' }",
     {}, "connections.u.base_url", "https://"),
    ("[connections.r]\ncrm = 'rownd'\nsecrets = { app_key = 'k-12345', app_secret = 's-12345' }",
     {}, "connections.r.connector.probe", "{{secrets.app_id}} names a secret"),
    ("[connections.g]\ncrm = 'generic'\nbase_url = 'https://api.example.com'\n"
     "[connections.g.connector]\nheaders = { 'X-Api-Key' = '{{secrets.key}}' }",
     {}, "connections.g.connector.headers.X-Api-Key", "names a secret the connection does not have"),
    ("[connections.g]\ncrm = 'generic'\nbase_url = 'https://api.example.com'\n"
     "[connections.g.connector]\nfetch = { path = '/contacts/{{contactid}}' }",
     {}, "connections.g.connector.fetch", "unknown merge field {{contactid}}"),
    ("[connections.g]\ncrm = 'generic'\nreturn_password_field = 'pw'", {}, "connections.g.return_password_field",
     "no write_back"),
    ("[connections.g]\ncrm = 'generic'\n[connections.g.connector]\nfetch = { method = 'GET' }", {},
     "connections.g.connector.fetch.path", "Field required"),
]


def _write(tmp_path: Path, extra: str) -> Path:
    """The base file with ``extra``'s sections merged in (a repeated key replaces the base's)."""
    import tomllib

    base = tomllib.loads(BASE.format(db=tmp_path / "bridge.db"))
    for section, values in tomllib.loads(extra).items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            if section == "connections":
                base[section].update(values)
            else:
                base[section].update(values)
        else:
            base[section] = values
    path = tmp_path / "bridge.toml"
    path.write_text(_dump(base))
    return path


def _dump(data: dict, prefix: str = "") -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in scalars.items()]
    text = "\n".join(lines) + "\n"
    for k, v in tables.items():
        text += _dump(v, f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k))
    return text


def test_the_base_configuration_is_clean(tmp_path, monkeypatch):
    """The starting point of the breakages has no problem (so each one below is its own doing)."""
    monkeypatch.delenv("WPSB_CONFIG", raising=False)
    report = collect(_write(tmp_path, ""))
    assert report.ok, report.problems


@pytest.mark.parametrize("extra,env,key,fragment", BREAKAGES, ids=[b[2] + "-" + str(i) for i, b in enumerate(BREAKAGES)])
def test_each_breakage_is_reported_with_its_key_and_source(tmp_path, monkeypatch, extra, env, key, fragment):
    """A broken value is reported under its dotted key, with where it came from and a fix."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = _write(tmp_path, extra)
    findings = {f.check: f for f in config_findings(collect(path))}
    assert key in findings, f"{key} not reported; got {sorted(findings)}"
    found = findings[key]
    assert found.status == "problem" and fragment in found.detail + " " + found.fix, found
    if env:
        assert f"environment {next(iter(env))}" in found.detail
    elif "[" not in found.detail or "default" not in found.detail:
        assert str(path) in found.detail
    assert found.fix


def test_one_run_reports_every_breakage_at_once(tmp_path):
    """doctor on a file broken in many places lists them all (not the first), exits 78, and never
    prints a secret."""
    extra = "\n".join([
        "log_level = 'verbose'",
        "[server]\nport = 'eighty'\naccess_keys = ['change-me', 'short']",
        "[wordpress]\nurl = 'example.com'\ntransport = 'soap'\napplication_password = 'top-secret-app-pw'",
        "[connections.x]\ncrm = 'nosuchcrm'",
        "[connections.f]\ncrm = 'customerly'\nsecrets = { token = 'change-me' }\nfields = { 'a.b' = 'shoe' }",
    ])
    path = _write(tmp_path, extra)
    env = {"PATH": "/usr/bin:/bin", "WPSB_WORKER__CONCURRENCY": "0"}
    result = subprocess.run([sys.executable, "-m", "bridge", "doctor", "--offline", "--json", "-c", str(path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 78, result.stdout + result.stderr
    reported = {f["check"] for f in json.loads(result.stdout) if f["status"] == "problem"}
    expected = {"log_level", "server.port", "server.access_keys.0", "server.access_keys.1", "wordpress.url",
                "wordpress.transport", "connections.x.crm", "connections.f.secrets.token",
                "connections.f.fields.a.b", "worker.concurrency"}
    assert expected <= reported, expected - reported
    assert "top-secret-app-pw" not in result.stdout

    table = subprocess.run([sys.executable, "-m", "bridge", "doctor", "--offline", "-c", str(path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert table.returncode == 78
    assert all(key in table.stdout for key in expected) and "problem(s)" in table.stdout


def test_serve_refuses_a_value_that_parses_but_cannot_work(tmp_path):
    """log_level = "verbose" used to crash serve with a traceback: now exit 78 naming the key."""
    path = _write(tmp_path, "log_level = 'verbose'")
    result = subprocess.run([sys.executable, "-m", "bridge", "serve", "-c", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78 and "log_level" in result.stderr and "Traceback" not in result.stderr


def test_unreadable_toml_is_one_problem_naming_the_file(tmp_path):
    """Broken TOML syntax: one problem with the position, exit 78."""
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport = 1\n")
    result = subprocess.run([sys.executable, "-m", "bridge", "doctor", "--offline", "--json", "-c", str(path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    [finding] = json.loads(result.stdout)
    assert finding["check"] == "config" and "invalid TOML" in finding["detail"] and str(path) in finding["detail"]
