"""The wheel as an operator gets it: built from this tree, installed into a fresh virtual
environment, it carries the plugin, the example configuration and the unit, answers --version,
runs doctor against the test WordPress and installs the plugin into a WordPress root."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = {"bridge/data/wp-sync-bridge.php": "wordpress/wp-sync-bridge.php",
            "bridge/data/config.example.toml": "config.example.toml",
            "bridge/data/wp-sync-bridge.service": "systemd/wp-sync-bridge.service"}


def test_pyproject_uses_an_spdx_license_expression():
    """PEP 639: a plain SPDX string (the table form stops building in 2027) and setuptools >= 77."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "GPL-2.0-or-later"
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in project["build-system"]["requires"])
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel, bin directory of a fresh venv with the wheel installed)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(work)],
                   check=True, capture_output=True, timeout=300)
    [wheel] = work.glob("wp_sync_bridge-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True, timeout=600)
    return wheel, venv / "bin"


@pytest.mark.wordpress
def test_the_wheel_carries_plugin_config_and_unit(installed):
    """The packaged files are the repository's own, byte for byte; the license is in the metadata."""
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        for inside, source in PACKAGED.items():
            assert z.read(inside) == (ROOT / source).read_bytes(), inside
        assert any(n.endswith("migrations/0001_initial.sql") for n in z.namelist())
        metadata = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    assert "License-Expression: GPL-2.0-or-later" in metadata


async def _run(*args: str, cwd: Path, env: dict | None = None) -> tuple[int, str]:
    """A command run without blocking the event loop (the fake CRM in this process must answer)."""
    proc = await asyncio.create_subprocess_exec(*args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode, out.decode()


@pytest.mark.wordpress
async def test_installed_command_answers_version_and_doctor(installed, wp_stack, fake_crm, tmp_path):
    """From the fresh venv (not this checkout): --version, then doctor against the test stack and the
    fake CRM exits 0 (warnings allowed: the stack's user is an administrator)."""
    _, bin_dir = installed
    exe = str(bin_dir / "wp-sync-bridge")
    code, out = await _run(exe, "--version", cwd=tmp_path)
    assert code == 0 and "0.1.0" in out
    config = tmp_path / "bridge.toml"
    config.write_text(f"""
[server]
port = 0
access_keys = ["packaged-key-123"]
[database]
path = "{tmp_path / 'bridge.db'}"
[wordpress]
url = "{wp_stack['WPSB_WP_URL']}"
username = "{wp_stack['WPSB_WP_USER']}"
application_password = "{wp_stack['WPSB_WP_APP_PASSWORD']}"
[connections.customerly]
crm = "customerly"
base_url = "{fake_crm.customerly_base}"
secrets = {{ token = "{fake_crm.customerly_token}" }}
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WPSB_")}
    code, out = await _run(exe, "doctor", "--json", "-c", str(config), cwd=tmp_path, env=env)
    findings = {f["check"]: f["status"] for f in json.loads(out)}
    assert code == 0, out
    assert findings["wordpress plugin"] == "ok" and findings["wordpress credentials"] == "ok"
    assert findings["crm customerly"] == "ok"
    assert wp_stack["WPSB_WP_APP_PASSWORD"] not in out and fake_crm.customerly_token not in out
    code, out = await _run(exe, "print-file", "config", cwd=tmp_path)
    assert out == (ROOT / "config.example.toml").read_text()


@pytest.mark.wordpress
def test_install_plugin_copies_into_mu_plugins_and_refuses_other_paths(installed, tmp_path):
    """install-plugin WP_ROOT writes wp-content/mu-plugins/wp-sync-bridge.php; a non-WordPress path is refused."""
    _, bin_dir = installed
    exe = str(bin_dir / "wp-sync-bridge")
    site = tmp_path / "site"
    (site / "wp-includes").mkdir(parents=True)
    (site / "wp-content").mkdir()
    # The real WordPress files that mark a root (from the Debian package the stack uses).
    source = Path("/usr/share/wordpress")
    shutil.copy(source / "wp-load.php", site / "wp-load.php")
    shutil.copy(source / "wp-includes" / "version.php", site / "wp-includes" / "version.php")
    done = subprocess.run([exe, "install-plugin", str(site)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    target = site / "wp-content" / "mu-plugins" / "wp-sync-bridge.php"
    assert target.read_bytes() == (ROOT / "wordpress" / "wp-sync-bridge.php").read_bytes()
    assert "installed" in done.stdout
    again = subprocess.run([exe, "install-plugin", str(site)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "updated" in again.stdout

    refused = subprocess.run([exe, "install-plugin", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 66 and "not a WordPress root" in refused.stderr
    assert not (tmp_path / "wp-content").exists()
