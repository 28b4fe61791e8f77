"""Passwords reach the CRM: a write-back that died (the CRM refused the token) and is requeued by
the operator once the token is fixed ends with the CRM holding a password that logs in, though the
dead job kept no plaintext password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import bridge_config, customerly_delivery, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress
ROOT = Path(__file__).resolve().parent.parent


def requeue_with_the_cli(tmp_path: Path, db_path: str, job_id: int) -> str:
    """``wp-sync-bridge jobs requeue ID`` on the running bridge's database, as an operator runs it."""
    config = tmp_path / "operator.toml"
    config.write_text(f"""
[database]
path = "{db_path}"
[wordpress]
url = "http://127.0.0.1:9"
application_password = "abcd efgh ijkl mnop"
[connections.customerly]
crm = "customerly"
secrets = {{ token = "cly-operator-token" }}
""")
    out = subprocess.run([sys.executable, "-m", "bridge", "jobs", "requeue", str(job_id), "--config", str(config)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_a_requeued_dead_write_back_ends_with_a_password_that_logs_in(tmp_path, wp_stack, fake_crm, start_bridge):
    """Token refused → dead (secret erased); token fixed + `jobs requeue` → a fresh password is set on
    the user and written back: the CRM's password logs in, and the outcome says it was renewed."""
    cfg = bridge_config(tmp_path, wp_stack, fake_crm)
    cfg["connections"]["customerly"]["fetch_contact"] = False  # only the write-back talks to the CRM
    b = await start_bridge(cfg)
    email = unique_email("requeue")
    token = fake_crm.customerly_token
    fake_crm.customerly_token = "rotated-by-the-crm"  # the bridge's token is refused from now on
    try:
        _, answer = await b.send(customerly_delivery(email), wpf_action="add")
        dead = await b.wait_job(answer["job_id"])
    finally:
        fake_crm.customerly_token = token  # the operator fixed the token
    assert dead["status"] == "dead" and "Access token not found" in dead["last_error"], dead
    assert dead["has_secret"] is False and dead["stage"] is not None  # no plaintext password in a dead row
    wp = WordPressProbe(wp_stack)
    [user] = await wp.users_with_email(email)
    assert "wp_password" not in (fake_crm.customerly_user(email) or {}).get("attributes", {})

    assert "requeued" in requeue_with_the_cli(tmp_path, cfg["database"]["path"], dead["id"])
    b.bridge.worker.notify()
    done = await b.wait_job(dead["id"])
    assert done["status"] == "done", done
    assert done["outcome"]["written_back"] == ["wp_password"] and done["outcome"]["password_renewed"] is True
    assert done["has_secret"] is False
    password = fake_crm.customerly_user(email)["attributes"]["wp_password"]
    assert await wp.can_log_in(user["username"], password)
    assert WordPressProbe(wp_stack).user_count(email) == 1
