"""Webhook signatures: HMAC-SHA256 over "{id}.{timestamp}.{body}", base64, prefixed "v1,".

Every delivery carries three headers:

- `Webhook-Id`: the delivery's id, the same on every retry (receivers dedupe on it);
- `Webhook-Timestamp`: Unix seconds when this attempt was sent;
- `Webhook-Signature`: `v1,<base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}"))>`,
  where `secret` is the webhook's own (UTF-8) or the server's default and `body` the
  exact bytes received. Several space-separated signatures may appear (secret rotation);
  one valid one is enough.

A receiver recomputes the HMAC over the raw body, compares in constant time and refuses
timestamps outside its replay window (`verify_signature` does all three).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300


class WebhookSignatureError(ValueError):
    """A webhook failed verification (the message says why)."""


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `Webhook-Signature` value for one attempt."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SCHEME},{base64.b64encode(digest).decode()}"


def signed_headers(
    secret: str, webhook_id: str, body: bytes, *, now: float | None = None
) -> dict[str, str]:
    """The three webhook headers for `body` sent now."""
    timestamp = int(time.time() if now is None else now)
    return {
        "Webhook-Id": webhook_id,
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": signature(secret, webhook_id, timestamp, body),
    }


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> None:
    """Check a received webhook; raises WebhookSignatureError when it must be refused.

    `headers` are looked up case-insensitively; `body` must be the raw bytes received
    (not re-serialised JSON). Timestamps more than `tolerance_s` from now, either way,
    are refused: a captured request cannot be replayed later.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    webhook_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    given = lowered.get("webhook-signature")
    if not webhook_id or not stamp or not given:
        raise WebhookSignatureError("missing Webhook-Id, Webhook-Timestamp or Webhook-Signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookSignatureError("Webhook-Timestamp is not Unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookSignatureError(
            f"Webhook-Timestamp is {int(current - timestamp)} s from now, outside the"
            f" {tolerance_s} s replay window"
        )
    expected = signature(secret, webhook_id, timestamp, body)
    for candidate in given.split():
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    raise WebhookSignatureError("no signature matches the body and secret")
