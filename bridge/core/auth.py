"""Access keys and Standard Webhooks signatures: pure checks, constant-time comparisons."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Iterable, Mapping

from bridge.errors import BadDelivery

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def key_matches(provided: str | None, keys: Iterable[str]) -> bool:
    """Whether ``provided`` equals one of ``keys``; every key is compared, in constant time."""
    if not provided:
        return False
    candidate = provided.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(candidate, key.encode())
    return ok


def _secret_bytes(secret: str) -> bytes:
    # Standard Webhooks secrets are "whsec_" + base64; anything else is used as raw text.
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :])
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``webhook-signature`` value ``v1,BASE64`` for one secret (used by tests and senders)."""
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_signature(
    secrets: Iterable[str],
    headers: Mapping[str, str],
    body: bytes,
    now_s: float,
    tolerance_s: int = 300,
) -> None:
    """Check a Standard Webhooks signature (https://www.standardwebhooks.com/); raise BadDelivery 401.

    Any of several secrets (rotation) may match any of the space-separated signatures.
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    given = headers.get("webhook-signature")
    if not msg_id or not stamp or not given:
        raise BadDelivery(401, "missing_signature",
                          "webhook-id, webhook-timestamp and webhook-signature headers are required",
                          field="webhook-signature")
    try:
        timestamp_s = int(stamp)
    except ValueError:
        raise BadDelivery(401, "invalid_signature", "webhook-timestamp is not an integer",
                          field="webhook-timestamp") from None
    if abs(now_s - timestamp_s) > tolerance_s:
        raise BadDelivery(401, "stale_signature", f"webhook-timestamp is more than {tolerance_s} s from now",
                          field="webhook-timestamp")
    offered = [part.encode() for part in given.split() if part.startswith("v1,")]
    ok = False
    for secret in secrets:
        expected = sign(secret, msg_id, timestamp_s, body).encode()
        for candidate in offered:
            ok |= hmac.compare_digest(expected, candidate)
    if not ok:
        raise BadDelivery(401, "invalid_signature", "no webhook-signature matches", field="webhook-signature")
