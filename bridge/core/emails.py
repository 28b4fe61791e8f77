"""Email addresses as WordPress takes them: pure checks, so an address WordPress would refuse is
answered 422 at intake instead of being acknowledged and dying in the job.

The rules are those of WordPress's ``is_email()`` (wp-includes/formatting.php,
https://developer.wordpress.org/reference/functions/is_email/): at least 6 characters, an ``@``
after the first character, a local part of ASCII letters, digits and ``!#$%&'*+/=?^_`{|}~.-``, and
a domain of at least two dot-separated labels of ASCII letters, digits and inner hyphens. An
internationalised domain (``user@bücher.example``) is converted to its punycode form (IDNA 2008,
UTS #46), which WordPress accepts; a non-ASCII local part cannot be converted and is refused.
"""

from __future__ import annotations

import re

import idna

from bridge.errors import BadDelivery

MAX_EMAIL_LENGTH = 100  # wp_users.user_email is VARCHAR(100)
_LOCAL = re.compile(r"^[a-zA-Z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_LABEL = re.compile(r"^[a-zA-Z0-9-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # one scan in C: a generator over the characters cost ~10 us
# PHP's trim() default characters, which is_email() compares against.
_PHP_TRIM = " \t\n\r\0\x0b"


def _refuse(email: str, why: str) -> BadDelivery:
    return BadDelivery(422, "invalid_email",
                       f"email {email[:60]!r} is not an address WordPress accepts: {why}",
                       field="email")


def _ascii_domain(email: str, domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise _refuse(email, f"the domain cannot be converted to punycode ({exc})") from None


def normalize_email(email: str) -> str:
    """The address WordPress will store (IDN domain in punycode); raises BadDelivery 422 naming
    the rule when WordPress's ``is_email()`` would refuse it."""
    if _CONTROL.search(email):
        raise _refuse(email, "it contains control characters")
    local, at, domain = email.partition("@")
    if not at or not local:
        raise _refuse(email, "it needs a local part, an @ and a domain")
    if not local.isascii():
        raise _refuse(email, "the part before the @ must be ASCII")
    if not _LOCAL.match(local):
        raise _refuse(email, "the part before the @ has characters WordPress does not allow")
    domain = _ascii_domain(email, domain)
    address = f"{local}@{domain}"
    if len(address) < 6:
        raise _refuse(email, "it is shorter than 6 characters")
    if len(address) > MAX_EMAIL_LENGTH:
        raise _refuse(email, f"it is longer than {MAX_EMAIL_LENGTH} characters")
    if ".." in domain or domain.strip(_PHP_TRIM + ".") != domain:
        raise _refuse(email, "the domain has empty labels")
    labels = domain.split(".")
    if len(labels) < 2:
        raise _refuse(email, "the domain needs at least two labels (example.com)")
    for label in labels:
        if label.strip(_PHP_TRIM + "-") != label or not _LABEL.match(label):
            raise _refuse(email, f"the domain label {label[:30]!r} is not letters, digits and inner hyphens")
    return address
