"""The people in the plugin's security tests, on the real test WordPress: callers that are not
administrators (a ``list_users``-only user, a ``create_users``-only user, a user with the plugin's
least-privilege ``wpsb_bridge`` role), the stack's administrator, and privileged victims; plus
each user read straight from the database, to prove that a refused call changed nothing.

Roles, users and application passwords are made by ``wordpress/test-support/wpsb-test-setup.php``
(PHP against the site, no wp-cli), once per stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator
from urllib.parse import urlsplit

from bridge.clients.wordpress import WordPress, make_wordpress
from bridge.errors import RemoteError
from bridge.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
SETUP_PHP = ROOT / "wordpress" / "test-support" / "wpsb-test-setup.php"
HIDDEN_ROLE_PLUGIN = ROOT / "wordpress" / "test-support" / "wpsb-test-hidden-role.php"
FAULT_PLUGIN = ROOT / "wordpress" / "test-support" / "wpsb-test-db-fault.php"
JOURNAL_PLUGIN = ROOT / "wordpress" / "test-support" / "wpsb-test-meta-journal.php"
OWN_HASHER_PLUGIN = ROOT / "wordpress" / "test-support" / "wpsb-test-own-hasher.php"
RUNTIME_GRANT_PLUGIN = ROOT / "wordpress" / "test-support" / "wpsb-test-runtime-grant.php"
CONTACT_KEY = "customerly_contact_id"
TAGS_KEY = "customerly_tags"
BRIDGE_CAPS = {"read", "list_users", "create_users", "edit_users", "promote_users"}

# Test roles: (slug, capabilities). "hidden" is not privileged but removed from editable_roles
# by wpsb-test-hidden-role.php; "shop" is privileged the way a WooCommerce shop manager is;
# "manager" holds manage_options, which no operator setting can make manageable.
TEST_ROLES = {
    "lister": ("wpsb_t_lister", ["read", "list_users"]),
    "creator": ("wpsb_t_creator", ["read", "list_users", "create_users"]),
    "hidden": ("wpsb_t_hidden_member", ["read"]),
    "shop": ("wpsb_t_shop", ["read", "list_users", "edit_users", "unfiltered_html"]),
    "manager": ("wpsb_t_manager", ["read", "manage_options"]),
}


@dataclass(frozen=True)
class Actor:
    """A WordPress user of the tests."""

    id: int
    login: str
    email: str
    password: str
    app_password: str | None = None
    contact_id: str | None = None


class Site:
    """The test site: set-up through PHP, reads through the database."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.url = env["WPSB_WP_URL"]
        self.site_dir = Path(env["WPSB_STACK_DIR"]) / "site"
        self.admin = Actor(1, env["WPSB_WP_USER"], "admin@example.com", env["WPSB_WP_ADMIN_PASSWORD"],
                           env["WPSB_WP_APP_PASSWORD"])

    def setup(self, ops: list[dict[str, Any]]) -> list[Any]:
        """Run set-up operations (see wpsb-test-setup.php) and return their results."""
        port = str(urlsplit(self.url).port)
        out = subprocess.run(["php", "-d", "display_errors=stderr", str(SETUP_PHP), str(self.site_dir), port],
                             input=json.dumps(ops), capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"set-up failed ({out.returncode}): {out.stderr or out.stdout}")
        return json.loads(out.stdout)

    def sql(self, query: str) -> list[str]:
        """Rows of a query as MariaDB's batch output lines (special characters escaped)."""
        out = subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={self.env['WPSB_DB_SOCKET']}", "-u", self.env["WPSB_DB_USER"],
             f"-p{self.env['WPSB_DB_PASSWORD']}", "-N", "-B", self.env["WPSB_DB_NAME"], "-e", query],
            check=True, capture_output=True, text=True,
        ).stdout
        return out.splitlines()

    def user_state(self, user_id: int) -> dict[str, list[str]]:
        """Everything the database holds about a user: the users row (email, login, password
        hash, ...), every meta row, and the plugin's contact index rows."""
        uid = int(user_id)
        meta = self.sql(f"SELECT meta_key, meta_value FROM wp_usermeta WHERE user_id = {uid} ORDER BY umeta_id")
        return {
            "user": self.sql(f"SELECT user_login, user_pass, user_email, user_nicename, display_name, user_status, "
                             f"user_activation_key FROM wp_users WHERE ID = {uid}"),
            "meta": [_without_last_use(row) for row in meta],
            "contacts": self.sql(f"SELECT meta_key, contact_id FROM wp_wpsb_contacts WHERE user_id = {uid} ORDER BY 1, 2"),
        }

    def users_with_email(self, email: str) -> list[int]:
        """IDs of the accounts with this email (case-insensitive)."""
        return [int(x) for x in self.sql(f"SELECT ID FROM wp_users WHERE LOWER(user_email) = LOWER('{email}')")]

    def roles_of(self, user_id: int) -> list[str]:
        """The user's roles, from the capabilities meta."""
        php = self.sql(f"SELECT meta_value FROM wp_usermeta WHERE user_id = {int(user_id)} AND meta_key = 'wp_capabilities'")
        if not php:
            return []
        out = subprocess.run(["php", "-r", "echo json_encode(array_keys(array_filter(unserialize(stream_get_contents(STDIN)))));"],
                             input=php[0], capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    def new_user(self, tag: str, role: str, *, caps: tuple[str, ...] = (), app_password: bool = False,
                 contact: bool = True) -> Actor:
        """A user made for the tests: unique login and email, a known password, optionally a
        contact ID already linked (as an earlier sync would have left it) and an application password."""
        [actor] = self.new_users([(tag, role, {"caps": caps, "app_password": app_password, "contact": contact})])
        return actor

    def new_users(self, specs: list[tuple[str, str, dict[str, Any]]]) -> list[Actor]:
        """Several users as ``new_user`` makes them, with one PHP run: (tag, role, options)."""
        ops, planned = [], []
        for tag, role, options in specs:
            suffix = uuid.uuid4().hex[:8]
            login, email, password = f"{tag}-{suffix}", f"{tag}-{suffix}@example.com", f"Pw-{uuid.uuid4().hex}"
            contact_id = f"legacy-{tag}-{suffix}" if options.get("contact", True) else None
            meta: dict[str, Any] = {"city": "Turin", TAGS_KEY: ["staff"]}
            if contact_id:
                meta[CONTACT_KEY] = contact_id
            ops.append({"op": "user", "login": login, "email": email, "password": password, "role": role,
                        "caps": list(options.get("caps", ())),
                        "denied_caps": list(options.get("denied_caps", ())), "meta": meta,
                        "app_password": bool(options.get("app_password"))})
            planned.append((login, email, password, contact_id))
        made = self.setup(ops)
        return [Actor(m["id"], login, email, password, m.get("app_password"), contact_id)
                for m, (login, email, password, contact_id) in zip(made, planned)]


def _without_last_use(row: str) -> str:
    """A meta row, where application passwords keep only their IDs and hashes: WordPress itself
    records when and from where a caller last used its own (last_used, last_ip)."""
    key, _, value = row.partition("\t")
    if key != "_application_passwords":
        return row
    kept = re.findall(r's:4:"uuid";s:\d+:"([^"]*)"|s:8:"password";s:\d+:"([^"]*)"', value)
    return f"{key}\t{sorted(kept)}"


def make_site(env: dict[str, str]) -> Site:
    """The site with the test roles in place and the hidden-role test plugin linked in."""
    site = Site(env)
    site.setup([{"op": "role", "slug": slug, "caps": caps} for slug, caps in TEST_ROLES.values()])
    link = site.site_dir / "wp-content" / "mu-plugins" / HIDDEN_ROLE_PLUGIN.name
    if not link.is_symlink():
        os.symlink(HIDDEN_ROLE_PLUGIN, link)
    return site


def link_fault_plugin(site: Site) -> None:
    """Link wpsb-test-db-fault.php into the test site (a failing query on demand, features hidden
    by an option)."""
    link = site.site_dir / "wp-content" / "mu-plugins" / FAULT_PLUGIN.name
    if not link.is_symlink():
        os.symlink(FAULT_PLUGIN, link)


@contextlib.contextmanager
def own_hasher(site: Site) -> Iterator[None]:
    """wpsb-test-own-hasher.php linked into the test site while the block runs: wp_hash_password()
    is a plugin's own (phpass "$P$D..." hashes) instead of core's."""
    link = site.site_dir / "wp-content" / "mu-plugins" / OWN_HASHER_PLUGIN.name
    os.symlink(OWN_HASHER_PLUGIN, link)
    try:
        yield
    finally:
        link.unlink()


@contextlib.contextmanager
def runtime_grant(site: Site, users: list[Actor]) -> Iterator[None]:
    """While the block runs, wpsb-test-runtime-grant.php grants ``users`` edit_users at run time
    (a user_has_cap filter), whatever their stored capabilities."""
    link = site.site_dir / "wp-content" / "mu-plugins" / RUNTIME_GRANT_PLUGIN.name
    site.setup([{"op": "option", "name": "wpsb_test_runtime_grants", "value": [u.id for u in users]}])
    os.symlink(RUNTIME_GRANT_PLUGIN, link)
    try:
        yield
    finally:
        link.unlink()
        site.setup([{"op": "option", "name": "wpsb_test_runtime_grants", "value": None}])


def link_journal_plugin(site: Site) -> None:
    """Link wpsb-test-meta-journal.php into the test site (each change of the user meta
    journal_seq also adds a journal_seq_log row, in WordPress's commit order)."""
    link = site.site_dir / "wp-content" / "mu-plugins" / JOURNAL_PLUGIN.name
    if not link.is_symlink():
        os.symlink(JOURNAL_PLUGIN, link)


def role(name: str) -> str:
    """The slug of a test role."""
    return TEST_ROLES[name][0]


@contextlib.asynccontextmanager
async def client_for(site: Site, actor: Actor, transport: str) -> AsyncIterator[WordPress]:
    """The bridge's own WordPress client, authenticated as ``actor`` with its application password."""
    settings = load_settings(None, wordpress={"url": site.url, "username": actor.login,
                                              "application_password": actor.app_password, "transport": transport},
                             worker={"http_attempts": 1})
    wp = make_wordpress(settings)
    try:
        yield wp
    finally:
        await wp.close()


async def refusal(call) -> RemoteError:
    """The typed error a plugin call ends in (fails the test when it succeeds)."""
    try:
        result = await call
    except RemoteError as exc:
        return exc
    raise AssertionError(f"expected a refusal, got {result!r}")
