"""The project's one exception root; retryable and permanent failures are distinct types.

A third kind, `FatalClientError`, is neither: the message is fine and waiting will not
help, because the client itself is broken; only a fresh process (with fresh clients) does.
"""

from __future__ import annotations


class ImagegenError(Exception):
    """Root of every error this project raises on purpose."""


class RetryableError(ImagegenError):
    """A failure that may succeed if tried again later (a dependency down, a timeout)."""


class PermanentError(ImagegenError):
    """A failure that will fail the same way again (bad input, a missing model)."""


class FatalClientError(ImagegenError):
    """A client that is unusable for good (librdkafka's fatal errors: PRODUCER_FENCED,
    OUT_OF_ORDER_SEQUENCE_NUMBER after a broker outage, ...): restart the process.

    Never the message's fault, so never a reason to dead-letter it: the consumer loop
    leaves the record uncommitted, stops, and the service exits non-zero so that its
    supervisor starts a fresh process, which gets the record again.
    """


class PoisonMessageError(PermanentError):
    """A message that cannot be decoded or validated against its contract."""


class ConfigurationError(PermanentError):
    """Settings that cannot work (a default secret outside dev, a missing model)."""


class NotFoundError(PermanentError):
    """A thing that does not exist (or that the caller may not see)."""


class BrokerAccessError(RetryableError):
    """The Kafka broker refuses this client: authentication failed, the TLS handshake
    failed, or an ACL is missing (imagegen/kafka/access.py names which and what to check).

    Never the message's fault, so never a reason to dead-letter it; and a fresh process
    would be refused the same way, so not fatal either. It is retryable in that the fix
    (a granted ACL, a corrected secret) is an operator's, and the record must still be
    there when it lands: consumer loops keep the record uncommitted and retry with backoff,
    logging the cause at ERROR, while readiness answers 503 naming it. One-shot tools
    (`imagegen dlq`, topic creation) fail at once with the same message.
    """
