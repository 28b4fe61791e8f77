"""The stack serves the WordPress line it was asked for (WPSB_WP_LINE: 6.1 from Debian 12, 6.8 from
Debian 13), and on each line the passwords the plugin sets are hashed the line's way and log in."""

from __future__ import annotations

import os
import subprocess

import pytest

from bridge.clients.wordpress import UpsertRequest, make_wordpress
from bridge.settings import load_settings
from tests.conftest import STACK, unique_email
from tests.wp import WordPressProbe

pytestmark = pytest.mark.wordpress

# How each line's wp_hash_password marks its hashes: phpass portable hashes up to 6.7, then bcrypt
# (password_hash with PASSWORD_BCRYPT, prefixed "$wp") from 6.8 on; the cost is PHP's default
# (10 on PHP 8.2, 12 from PHP 8.4), so it is not pinned here.
HASH_PREFIX = {"6.1": "$P$B", "6.8": "$wp$2y$"}


@pytest.fixture(params=["rest", "xmlrpc"])
async def wp(request, wp_stack):
    """The bridge's WordPress client for each transport."""
    settings = load_settings(None, wordpress={
        "url": wp_stack["WPSB_WP_URL"], "username": wp_stack["WPSB_WP_USER"],
        "application_password": wp_stack["WPSB_WP_APP_PASSWORD"], "transport": request.param,
    })
    client = make_wordpress(settings)
    yield client
    await client.close()


def stored_hash(env: dict[str, str], user_id: int) -> str:
    """The user's password hash exactly as the users table holds it."""
    sql = f"SELECT user_pass FROM wp_users WHERE ID = {int(user_id)}"
    return subprocess.run(
        ["mariadb", f"--socket={env['WPSB_DB_SOCKET']}", "-u", env["WPSB_DB_USER"],
         f"-p{env['WPSB_DB_PASSWORD']}", "-N", "-B", "--raw", env["WPSB_DB_NAME"], "-e", sql],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


async def test_the_stack_runs_the_line_it_was_asked_for(wp, wp_stack):
    """The plugin, asked through either transport, reports the WordPress version of WPSB_WP_LINE."""
    status = await wp.status()
    line = wp_stack["WPSB_WP_LINE"]
    assert line in HASH_PREFIX
    assert status["wordpress_version"] == wp_stack["WPSB_WP_VERSION"]
    assert status["wordpress_version"].startswith(line + "."), (line, status)


async def test_a_password_the_plugin_sets_is_hashed_the_lines_way_and_logs_in(wp, wp_stack):
    """A created user's password is stored as this line hashes it (bcrypt on 6.8) and opens the login form."""
    email, password = unique_email("line"), "Line-pw-1234567890"
    request = UpsertRequest(email=email, login=email, password=password, tags_key="customerly_tags",
                            contact_id_key="customerly_contact_id")
    result = await wp.upsert(request)
    assert result.created
    assert stored_hash(wp_stack, result.user_id).startswith(HASH_PREFIX[wp_stack["WPSB_WP_LINE"]])
    probe = WordPressProbe(wp_stack)
    assert await probe.can_log_in(email, password)
    assert not await probe.can_log_in(email, password + "x")


def test_a_stack_keeps_its_line_and_refuses_unknown_ones(wp_stack):
    """`up` with the other line or an unknown line is refused; the running stack stays as it is."""
    other = {"6.1": "6.8", "6.8": "6.1"}[wp_stack["WPSB_WP_LINE"]]
    stack_env = {**os.environ, "WPSB_STACK_DIR": wp_stack["WPSB_STACK_DIR"]}
    switched = subprocess.run([str(STACK), "up"], env={**stack_env, "WPSB_WP_LINE": other},
                              capture_output=True, text=True)
    assert switched.returncode != 0
    assert f"holds WordPress {wp_stack['WPSB_WP_LINE']}; run 'purge'" in switched.stderr
    unknown = subprocess.run([str(STACK), "env"], env={**stack_env, "WPSB_WP_LINE": "6.5"},
                             capture_output=True, text=True)
    assert unknown.returncode != 0 and "WPSB_WP_LINE must be one of: 6.1 6.8" in unknown.stderr
    status = subprocess.run([str(STACK), "status"], env=stack_env, capture_output=True, text=True)
    assert status.returncode == 0, status.stdout
    assert f"WordPress {wp_stack['WPSB_WP_VERSION']} (line {wp_stack['WPSB_WP_LINE']})" in status.stdout
