"""Reading what the real WordPress holds, for assertions: core REST (not the bridge's plugin) for
users, roles and meta, and the login form to prove a password really logs in."""

from __future__ import annotations

import json
import subprocess
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from bridge.clients.http import basic_auth


class WordPressProbe:
    """Admin access to the test site's core REST API with the stack's application password."""

    def __init__(self, env: dict[str, str]) -> None:
        self.url = env["WPSB_WP_URL"].rstrip("/")
        self.auth_header = {"Authorization": basic_auth(env["WPSB_WP_USER"], env["WPSB_WP_APP_PASSWORD"])}
        self.db = env

    async def users_with_email(self, email: str) -> list[dict[str, Any]]:
        """Every account whose email is exactly ``email`` (REST search is a substring match)."""
        async with aiohttp.ClientSession(headers=self.auth_header) as s:
            params = {"rest_route": "/wp/v2/users", "search": email, "context": "edit", "per_page": "100"}
            async with s.get(self.url + "/", params=params) as resp:
                assert resp.status == 200, await resp.text()
                users = await resp.json()
        return [u for u in users if u["email"].lower() == email.lower()]

    async def user(self, user_id: int) -> dict[str, Any]:
        """One user in the edit context (roles, names)."""
        async with aiohttp.ClientSession(headers=self.auth_header) as s:
            params = {"rest_route": f"/wp/v2/users/{user_id}", "context": "edit"}
            async with s.get(self.url + "/", params=params) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

    def meta(self, user_id: int, key: str) -> Any:
        """A user meta value exactly as stored in the database (PHP-unserialized), or None."""
        sql = f"SELECT meta_value FROM wp_usermeta WHERE user_id = {int(user_id)} AND meta_key = '{key}'"
        out = subprocess.run(
            ["mariadb", f"--socket={self.db['WPSB_DB_SOCKET']}", "-u", self.db["WPSB_DB_USER"],
             f"-p{self.db['WPSB_DB_PASSWORD']}", "-N", "-B", "--raw", self.db["WPSB_DB_NAME"], "-e", sql],
            check=True, capture_output=True, text=True,
        ).stdout
        if not out:
            return None
        php = "echo json_encode(maybe_unserialize_(stream_get_contents(STDIN)));"
        php = "function maybe_unserialize_($v){$u=@unserialize($v);return ($u===false && $v!=='b:0;')?$v:$u;} " + php
        decoded = subprocess.run(["php", "-r", php], input=out.rstrip("\n"), check=True, capture_output=True, text=True).stdout
        return json.loads(decoded)

    def user_count(self, email: str) -> int:
        """How many accounts have exactly this email (case-insensitive), straight from the users table."""
        sql = f"SELECT COUNT(*) FROM wp_users WHERE LOWER(user_email) = LOWER('{email}')"
        out = subprocess.run(
            ["mariadb", f"--socket={self.db['WPSB_DB_SOCKET']}", "-u", self.db["WPSB_DB_USER"],
             f"-p{self.db['WPSB_DB_PASSWORD']}", "-N", "-B", self.db["WPSB_DB_NAME"], "-e", sql],
            check=True, capture_output=True, text=True,
        ).stdout
        return int(out.strip())

    async def create_admin(self, email: str, login: str, password: str) -> int:
        """An administrator created through core REST (to check the bridge never demotes one)."""
        async with aiohttp.ClientSession(headers=self.auth_header) as s:
            body = {"username": login, "email": email, "password": password, "roles": ["administrator"]}
            async with s.post(self.url + "/", params={"rest_route": "/wp/v2/users"}, json=body) as resp:
                assert resp.status == 201, await resp.text()
                return (await resp.json())["id"]

    async def can_log_in(self, login: str, password: str) -> bool:
        """Whether the login form accepts these credentials (a logged-in cookie comes back)."""
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as s:
            s.cookie_jar.update_cookies({"wordpress_test_cookie": "WP Cookie check"})
            form = {"log": login, "pwd": password, "wp-submit": "Log In", "testcookie": "1"}
            async with s.post(self.url + "/wp-login.php", data=form, allow_redirects=False) as resp:
                cookies = resp.headers.getall("Set-Cookie", [])
        return any(c.startswith("wordpress_logged_in_") for c in cookies)

    async def reset_password(self, link: str, new_password: str) -> bool:
        """Follow a mailed set-password link (``wp-login.php?action=rp&key=...&login=...``) as a
        browser does and choose ``new_password``; whether WordPress said it was reset."""
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as s:
            async with s.get(link, allow_redirects=False) as resp:  # the key goes into a cookie
                assert resp.status in (302, 303), resp.status
            key = parse_qs(urlsplit(link).query)["key"][0]
            form = {"pass1": new_password, "pass2": new_password, "rp_key": key, "wp-submit": "Save Password"}
            async with s.post(self.url + "/wp-login.php?action=resetpass", data=form) as resp:
                page = await resp.text()
        return "password has been reset" in page

    async def ask_for_reset(self, login: str) -> None:
        """Submit the "Lost your password?" form for ``login`` (WordPress mails a link)."""
        async with aiohttp.ClientSession() as s:
            form = {"user_login": login, "wp-submit": "Get New Password"}
            async with s.post(self.url + "/wp-login.php?action=lostpassword", data=form,
                              allow_redirects=False) as resp:
                assert resp.status in (302, 303), (resp.status, (await resp.text())[:300])

    def user_pass(self, user_id: int) -> str:
        """The user's stored ``user_pass`` (a hash, or the plugin's unusable value)."""
        sql = f"SELECT user_pass FROM wp_users WHERE ID = {int(user_id)}"
        return subprocess.run(
            ["mariadb", f"--socket={self.db['WPSB_DB_SOCKET']}", "-u", self.db["WPSB_DB_USER"],
             f"-p{self.db['WPSB_DB_PASSWORD']}", "-N", "-B", self.db["WPSB_DB_NAME"], "-e", sql],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
