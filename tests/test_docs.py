"""The configuration reference is generated from the settings model and must not drift from it;
the README links the operator documentation; the example configuration only holds real keys."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.config_report import collect
from bridge.docs import render, undocumented
from bridge.settings import ConnectionSettings, ServerSettings, Settings, WordPressSettings, WorkerSettings

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_matches_the_settings_model():
    """docs/configuration.md is exactly what `python -m bridge.docs` prints (run `make docs` after a change)."""
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), "docs/configuration.md is stale: run `make docs` (python -m bridge.docs)"


def test_every_setting_is_documented_with_type_default_and_environment():
    """Each key of the model has a description, and the reference names its environment variable."""
    assert undocumented() == [], "describe these keys in bridge/docs.py DESCRIPTIONS or Field(description=)"
    text = render()
    for section, model in (("server", ServerSettings), ("worker", WorkerSettings), ("wordpress", WordPressSettings)):
        for name in model.model_fields:
            assert f"| `{section}.{name}` |" in text and f"`WPSB_{section.upper()}__{name.upper()}`" in text
    for name in ConnectionSettings.model_fields:
        assert f"| `connections.NAME.{name}` |" in text
    for name, info in Settings.model_fields.items():
        assert f"`{name}" in text


def test_readme_links_the_operator_docs():
    """The README points at the configuration reference, the production install and the runbook."""
    readme = (ROOT / "README.md").read_text()
    for doc in ("docs/configuration.md", "docs/production.md", "docs/runbook.md", "CHANGELOG.md"):
        assert f"]({doc})" in readme and (ROOT / doc).is_file()
    production = (ROOT / "docs" / "production.md").read_text()
    assert "reverse_proxy" in production and "proxy_pass" in production and "--role=wpsb_bridge" in production
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for topic in ("## Dead letters", "## Rejected deliveries and replay", "## Outages", "## Upgrades", "## Backups"):
        assert topic in runbook
    assert "_WP_SYNC_BRIDGE_COMPLETE=bash_source" in runbook


def test_example_configuration_has_only_known_keys(monkeypatch):
    """config.example.toml's only problems are its placeholders (every key in it is a real setting)."""
    for name in list(__import__("os").environ):
        if name.startswith("WPSB_"):
            monkeypatch.delenv(name)
    report = collect(ROOT / "config.example.toml")
    problems = [p for p in report.problems if p.severity == "problem"]
    assert problems and all("placeholder" in p.message for p in problems), problems
    assert {p.key for p in problems} == {"server.access_keys.0", "wordpress.application_password",
                                         "connections.customerly.secrets.token"}
    assert not re.search(r"unknown key", " ".join(p.message for p in report.problems))
