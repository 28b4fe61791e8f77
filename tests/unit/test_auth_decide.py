"""Access keys, Standard Webhooks signatures, and the add decisions (login, role, password)."""

import pytest

from bridge.core.auth import key_matches, sign, verify_signature
from bridge.core.decide import base_login, generate_password, resolve_role
from bridge.errors import BadDelivery

ROLES = {"administrator": "Administrator", "subscriber": "Subscriber", "customer": "Customer", "editor": "Editor"}


def test_key_matches_any_of_several_keys():
    """Several keys are valid at once (rotation); empty or wrong keys are not."""
    assert key_matches("new-key-123", ["old-key-123", "new-key-123"])
    assert not key_matches("nope", ["old-key-123"])
    assert not key_matches(None, ["old-key-123"])
    assert not key_matches("", [""])


def test_signature_round_trip_and_rotation():
    """A signature made with any configured secret verifies; a changed body does not."""
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1000",
               "webhook-signature": "v1,bogus " + sign("whsec_c2VjcmV0LXR3bw==", "msg_1", 1000, b"{}")}
    verify_signature(["whsec_c2VjcmV0LW9uZQ==", "whsec_c2VjcmV0LXR3bw=="], headers, b"{}", now_s=1010)
    with pytest.raises(BadDelivery) as info:
        verify_signature(["whsec_c2VjcmV0LXR3bw=="], headers, b"{ }", now_s=1010)
    assert info.value.code == "invalid_signature" and info.value.status == 401


def test_signature_outside_tolerance_is_refused():
    """Old or future timestamps are refused (replay protection)."""
    headers = {"webhook-id": "m", "webhook-timestamp": "1000", "webhook-signature": sign("s", "m", 1000, b"")}
    with pytest.raises(BadDelivery) as info:
        verify_signature(["s"], headers, b"", now_s=2000, tolerance_s=300)
    assert info.value.code == "stale_signature"


def test_generated_passwords_are_random_and_complete():
    """Generated passwords have the length asked, letters, digits and a symbol, and differ."""
    pws = {generate_password(16) for _ in range(200)}
    assert len(pws) == 200
    for pw in pws:
        assert len(pw) == 16 and any(c.isdigit() for c in pw) and any(c.isalpha() for c in pw)


@pytest.mark.parametrize("fmt,expected", [("email", "ana@x.io"), ("flname", "anamaria"), ("fnamenum", "ana417")])
def test_username_formats(fmt, expected):
    """WP Fusion's username formats; accents are folded to ASCII."""
    assert base_login(fmt, "ana@x.io", "Ána", "María", 417) == expected


def test_username_format_falls_back_to_email_without_names():
    """No names: the email is the login."""
    assert base_login("flname", "z@x.io", None, None, 1) == "z@x.io"


@pytest.mark.parametrize("requested,slug,warns", [
    ("customer", "customer", False),
    ("Customer", "customer", False),
    ("administrator", "subscriber", True),
    ("Administrator", "subscriber", True),
    ("ghost", "subscriber", True),
    ("editor", "subscriber", True),
])
def test_role_policy(requested, slug, warns):
    """Slug or title accepted; administrator never; unknown or not-allowed roles fall back with a warning."""
    d = resolve_role(requested, ROLES, ["subscriber", "customer"], "subscriber", creating=True)
    assert d.role == slug and bool(d.warning) is warns


def test_no_role_requested():
    """No role: default on create, leave alone on update."""
    assert resolve_role(None, ROLES, None, "subscriber", creating=True).role == "subscriber"
    assert resolve_role(None, ROLES, None, "subscriber", creating=False).role is None
