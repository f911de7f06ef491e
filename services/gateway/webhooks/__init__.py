"""Webhooks: signed POSTs of a job's terminal event (and, if asked, each stored image).

`signing` (headers, `verify_signature` for receivers), `targets` (SSRF rules), `models`
(HTTP bodies), `store` (rows, enqueued in the projection's transaction), `dispatcher`
(the background sender with retries).
"""

from services.gateway.webhooks.signing import WebhookSignatureError, verify_signature

__all__ = ["WebhookSignatureError", "verify_signature"]
