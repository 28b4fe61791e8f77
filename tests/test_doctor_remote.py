"""doctor against the real things: the test WordPress, the fake CRMs (their documented auth errors),
a real database file and a real socket."""

from __future__ import annotations

import os
import socket
import sqlite3

import pytest

from bridge.config_report import collect
from bridge.doctor import crm_findings, wordpress_findings
from bridge.doctor_local import database_findings, listen_findings
from bridge.settings import load_settings
from tests.conftest import bridge_config

def _by_check(findings):
    return {f.check: f for f in findings}


@pytest.mark.wordpress
async def test_wordpress_checks_pass_and_warn_on_an_administrator(tmp_path, wp_stack, fake_crm):
    """Reachable, credentials, plugin API, capabilities and roles are ok; the admin user is a warning."""
    settings = load_settings(None, **bridge_config(tmp_path, wp_stack, fake_crm))
    found = _by_check(await wordpress_findings(settings))
    for check in ("wordpress", "wordpress credentials", "wordpress plugin", "wordpress capabilities", "wordpress roles"):
        assert found[check].status == "ok", found[check]
    assert found["wordpress user"].status == "warning" and "administrator" in found["wordpress user"].detail


@pytest.mark.wordpress
async def test_least_privilege_user_passes_and_a_lesser_one_is_named(tmp_path, wp_stack, fake_crm):
    """A user with the plugin's wpsb_bridge role: capabilities ok and no warning; a user that may
    only list users: a problem naming what it lacks (read from the plugin's status.caller)."""
    from tests.plugin_actors import make_site, role

    config = bridge_config(tmp_path, wp_stack, fake_crm)
    await wordpress_findings(load_settings(None, **config))  # the plugin makes its role on a first call
    site = make_site(wp_stack)
    bridge_user, lister = site.new_users([("doctor", "wpsb_bridge", {"app_password": True, "contact": False}),
                                          ("doctor-lister", role("lister"), {"app_password": True, "contact": False})])

    def as_user(actor):
        wp = {**config["wordpress"], "username": actor.login, "application_password": actor.app_password}
        return load_settings(None, **{**config, "wordpress": wp})

    found = _by_check(await wordpress_findings(as_user(bridge_user)))
    assert found["wordpress capabilities"].status == "ok" and "wpsb_bridge" in found["wordpress capabilities"].detail
    assert "wordpress user" not in found and found["wordpress roles"].status == "ok"
    found = _by_check(await wordpress_findings(as_user(lister)))
    caps = found["wordpress capabilities"]
    assert caps.status == "problem" and "create_users" in caps.detail and "promote_users" in caps.detail


@pytest.mark.wordpress
async def test_wrong_application_password_and_unknown_roles_are_problems(tmp_path, wp_stack, fake_crm):
    """A refused application password is named; roles the site lacks are named with their key."""
    config = bridge_config(tmp_path, wp_stack, fake_crm)
    config["wordpress"] = {**config["wordpress"], "application_password": "wrong pass word here"}
    found = _by_check(await wordpress_findings(load_settings(None, **config)))
    assert found["wordpress credentials"].status == "problem"
    assert "wrong pass word here" not in str(found)

    config = bridge_config(tmp_path, wp_stack, fake_crm)
    config["wordpress"] = {**config["wordpress"], "default_role": "member", "allowed_roles": ["subscriber", "vip"]}
    found = _by_check(await wordpress_findings(load_settings(None, **config)))
    assert found["wordpress.default_role"].status == "problem" and "'member'" in found["wordpress.default_role"].detail
    assert found["wordpress.allowed_roles"].status == "problem" and "vip" in found["wordpress.allowed_roles"].detail


@pytest.mark.wordpress
async def test_a_url_that_is_not_wordpress_is_reported(tmp_path, wp_stack, fake_crm):
    """wordpress.url pointing at something else (here the fake CRM): a problem on wordpress.url."""
    config = bridge_config(tmp_path, wp_stack, fake_crm)
    config["wordpress"] = {**config["wordpress"], "url": fake_crm.url}
    found = _by_check(await wordpress_findings(load_settings(None, **config)))
    assert found["wordpress.url"].status == "problem"


@pytest.mark.wordpress
async def test_crm_credentials_are_checked_through_the_probe(tmp_path, wp_stack, fake_crm):
    """Each connection's probe: right credentials ok, wrong ones (401, Customerly's 500) named, a
    wrong base path named, a connector without a probe a warning."""
    connections = {
        "cly_ok": {"crm": "customerly", "base_url": fake_crm.customerly_base, "secrets": {"token": fake_crm.customerly_token}},
        "cly_bad": {"crm": "customerly", "base_url": fake_crm.customerly_base, "secrets": {"token": "wrong-token-1"}},
        "uc_ok": {"crm": "usercom", "base_url": fake_crm.usercom_base, "secrets": {"token": fake_crm.usercom_key}},
        "uc_bad": {"crm": "usercom", "base_url": fake_crm.usercom_base, "secrets": {"token": "wrong-token-2"}},
        "uc_path": {"crm": "usercom", "base_url": fake_crm.url + "/usercom/api", "secrets": {"token": fake_crm.usercom_key}},
        "rownd_ok": {"crm": "rownd", "base_url": fake_crm.rownd_base,
                     "secrets": {"app_key": fake_crm.rownd_app_key, "app_secret": fake_crm.rownd_app_secret,
                                 "app_id": "app-1"}},
        "gen": {"crm": "generic", "base_url": fake_crm.generic_base, "secrets": {"key": fake_crm.generic_key}},
    }
    config = bridge_config(tmp_path, wp_stack, fake_crm, connections=connections)
    settings = load_settings(None, **config)
    found = _by_check(await crm_findings(settings, collect(None)))
    assert found["crm cly_ok"].status == "ok" and found["crm uc_ok"].status == "ok" and found["crm rownd_ok"].status == "ok"
    assert found["connections.cly_bad.secrets"].status == "problem"
    assert found["connections.uc_bad.secrets"].status == "problem"
    assert found["connections.uc_path.base_url"].status == "problem"
    assert found["crm gen"].status == "warning" and "probe" in found["crm gen"].detail
    assert "wrong-token" not in str(found)


def test_database_checks_never_create_and_name_the_owner(tmp_path):
    """No file: a warning and nothing created. A file owned by someone else than the service user:
    a problem with the chown to run. Dead jobs: a warning with the command to requeue them."""
    from bridge.store.db import connect, migrate

    db = tmp_path / "state" / "bridge.db"
    settings = load_settings(None, database={"path": str(db)})
    [finding] = database_findings(settings)
    assert finding.status == "warning" and not db.parent.exists()
    db.parent.mkdir()
    assert database_findings(settings)[0].status == "warning" and not db.exists()

    conn = connect(db)
    migrate(conn)
    conn.execute("INSERT INTO jobs (connection, action, contact_key, payload, status, run_at, created_at, updated_at)"
                 " VALUES ('c', 'add', 'c:email:a@b.c', '{}', 'dead', 0, 0, 0)")
    conn.close()
    found = _by_check(database_findings(settings, service_user=None))
    assert found["database owner"].status == "ok" and found["database schema"].status == "ok"
    assert found["dead jobs"].status == "warning" and "requeue --status dead" in found["dead jobs"].fix
    if os.geteuid() == 0:
        found = _by_check(database_findings(settings, service_user="nobody"))
        assert found["database owner"].status == "problem" and found["database owner"].fix.startswith("chown nobody:")


def test_listen_address_in_use_is_a_problem(tmp_path):
    """A port another program holds is a problem; a free one can be bound; a foreign address is named."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        [busy] = listen_findings(load_settings(None, server={"port": port}))
        assert busy.status == "problem" and "in use" in busy.detail
        random_port, metrics = listen_findings(load_settings(None, server={"port": 0, "metrics_port": port}))
        assert random_port.check == "server.port" and random_port.status == "warning"
        assert metrics.check == "metrics address" and metrics.status == "problem" and "metrics_port" in metrics.fix
    finally:
        holder.close()
    [free] = listen_findings(load_settings(None, server={"port": port}))
    assert free.status == "ok"
    [foreign] = listen_findings(load_settings(None, server={"host": "192.0.2.1", "port": port}))
    assert foreign.check == "server.host" and foreign.status == "problem"


def test_read_only_check_leaves_a_root_run_harmless(tmp_path):
    """doctor (as root) on a database owned by another user gives back the -wal/-shm files it made."""
    if os.geteuid() != 0:
        pytest.skip("needs root to own files as another user")
    import pwd

    from bridge.store.db import connect, migrate

    db = tmp_path / "bridge.db"
    conn = connect(db)
    migrate(conn)
    conn.close()
    nobody = pwd.getpwnam("nobody")
    os.chown(db, nobody.pw_uid, nobody.pw_gid)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            os.unlink(f"{db}{suffix}")
    database_findings(load_settings(None, database={"path": str(db)}))
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            assert os.stat(f"{db}{suffix}").st_uid == nobody.pw_uid
    assert sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)
