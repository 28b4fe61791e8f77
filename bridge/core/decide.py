"""Decisions of WP Fusion's ``add``: login, password and role. Pure apart from the random source."""

from __future__ import annotations

import re
import secrets
import string
import unicodedata
from dataclasses import dataclass

ADMIN = "administrator"
# Letters and digits plus punctuation that survives a login form, a mail merge and a shell paste.
PASSWORD_ALPHABET = string.ascii_letters + string.digits + "!#%+-=?@^_"


def generate_password(length: int = 16) -> str:
    """A cryptographically random password with at least one letter, digit and symbol."""
    if length < 8:
        raise ValueError("password length must be at least 8")
    while True:
        pw = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        if any(c.isalpha() for c in pw) and any(c.isdigit() for c in pw) and any(not c.isalnum() for c in pw):
            return pw


def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9._-]", "", folded.lower())


def base_login(username_format: str, email: str, first_name: str | None, last_name: str | None,
               number: int) -> str:
    """The login to try for a new user (WordPress makes it unique by appending a number).

    ``email`` (default) uses the address; ``flname`` first+last name; ``fnamenum`` first name and
    ``number``. Falls back to the email when the names give nothing usable.
    """
    if username_format == "flname":
        login = _ascii_slug(f"{first_name or ''}{last_name or ''}")
    elif username_format == "fnamenum":
        first = _ascii_slug(first_name or "")
        login = f"{first}{number}" if first else ""
    else:
        login = email
    return login or email


@dataclass(frozen=True)
class RoleDecision:
    """The role to apply (None: leave the user's role alone) and why it differs, if it does."""

    role: str | None
    warning: str | None = None


def resolve_role(
    requested: str | None,
    site_roles: dict[str, str],
    allowed_roles: list[str] | None,
    default_role: str,
    creating: bool,
) -> RoleDecision:
    """Apply the role policy: slug or title accepted, never administrator, only allowed known roles.

    ``site_roles`` maps slug → display name. ``allowed_roles`` None means every site role but
    administrator. A role that is refused falls back to ``default_role`` with a warning.
    """
    if not requested:
        return RoleDecision(default_role if creating else None)
    wanted = requested.strip()
    slug = None
    for s, name in site_roles.items():
        if wanted.lower() in (s.lower(), name.lower()):
            slug = s
            break
    if slug == ADMIN or wanted.lower() == ADMIN:
        return RoleDecision(default_role, f"role {wanted!r} is never granted; using {default_role!r}")
    if slug is None:
        return RoleDecision(default_role,
                            f"role {wanted!r} does not exist on the site; using {default_role!r}")
    if allowed_roles is not None and slug not in allowed_roles:
        return RoleDecision(default_role, f"role {slug!r} is not in allowed_roles; using {default_role!r}")
    return RoleDecision(slug)
